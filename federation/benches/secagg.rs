//! Secure aggregation benchmark: one round of SecAgg (and SecAgg+) against plain
//! summation of the same vectors, and the client's mask generation throughput.
//!
//! ```text
//! cargo bench -p quiver-federation --bench secagg
//! cargo bench -p quiver-federation --bench secagg -- --dim 100000 --clients 10,50 --rounds 3
//! ```
//!
//! Every party runs in this one process, one after the other, so the table gives both
//! the total CPU time of a round and its critical path: per stage, the slowest client
//! (in a deployment each bank computes in parallel on its own machine) plus the
//! coordinator. Network time is not included; the service layer's benchmark adds it.
//! The plain round quantizes each vector and sums them: what a coordinator without
//! secure aggregation does with the same inputs. Output: a table and one JSON line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use quiver_federation::protocol::prg::MaskPrg;
use quiver_federation::protocol::quantize::Quantizer;
use quiver_federation::protocol::secagg::{
    Client, ClientPolicy, Params, Roster, RoundId, Server, default_colluders, default_threshold,
};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

mod common;
use common::arg;

struct Timing {
    total_ms: f64,
    critical_ms: f64,
    server_ms: f64,
    max_client_ms: f64,
}

fn secure_round(
    n: usize,
    neighbours: usize,
    threshold: usize,
    inputs: &[Vec<u32>],
    ids: &[Arc<Ed25519KeyPair>],
    roster: &Arc<Roster>,
    r: u64,
) -> Timing {
    let len = inputs[0].len();
    let params = Params {
        clients: n,
        threshold,
        neighbours,
        len,
    };
    let round = RoundId {
        session: [7; 16],
        round: r,
    };
    let mut server_ms = 0.0;
    let mut client_ms = vec![0.0f64; n];
    let mut critical = 0.0;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let mut server = Server::new(params.clone(), round, roster.clone()).unwrap();
    server_ms += ms(t);
    let mut clients = BTreeMap::new();
    let mut stage_max = 0.0f64;
    for i in 0..n as u32 {
        let t = Instant::now();
        let (c, adv) = Client::new(
            i,
            ids[i as usize].clone(),
            roster.clone(),
            params.clone(),
            ClientPolicy::against(n, params.colluders_tolerated()),
            round,
        )
        .unwrap();
        let d = ms(t);
        client_ms[i as usize] += d;
        stage_max = stage_max.max(d);
        clients.insert(i, c);
        let t = Instant::now();
        server.receive_keys(adv).unwrap();
        server_ms += ms(t);
    }
    let t = Instant::now();
    let keys = server.close_keys().unwrap();
    let s0 = ms(t);
    server_ms += s0;
    critical += stage_max + s0;

    let mut stage_max = 0.0f64;
    let mut server_stage = 0.0;
    for (i, ks) in &keys {
        let t = Instant::now();
        let m = clients.get_mut(i).unwrap().share_keys(ks).unwrap();
        let d = ms(t);
        client_ms[*i as usize] += d;
        stage_max = stage_max.max(d);
        let t = Instant::now();
        server.receive_shares(m).unwrap();
        server_stage += ms(t);
    }
    let t = Instant::now();
    let inbox = server.close_shares().unwrap();
    server_stage += ms(t);
    server_ms += server_stage;
    critical += stage_max + server_stage;

    let mut stage_max = 0.0f64;
    let mut server_stage = 0.0;
    for (i, s) in &inbox {
        let t = Instant::now();
        let m = clients
            .get_mut(i)
            .unwrap()
            .masked_input(s, &inputs[*i as usize])
            .unwrap();
        let d = ms(t);
        client_ms[*i as usize] += d;
        stage_max = stage_max.max(d);
        let t = Instant::now();
        server.receive_masked(m).unwrap();
        server_stage += ms(t);
    }
    let t = Instant::now();
    let list = server.close_masked().unwrap();
    server_stage += ms(t);
    server_ms += server_stage;
    critical += stage_max + server_stage;

    let mut stage_max = 0.0f64;
    let mut server_stage = 0.0;
    for i in &list.survivors {
        let t = Instant::now();
        let m = clients.get_mut(i).unwrap().consistency(&list).unwrap();
        let d = ms(t);
        client_ms[*i as usize] += d;
        stage_max = stage_max.max(d);
        let t = Instant::now();
        server.receive_consistency(m).unwrap();
        server_stage += ms(t);
    }
    let t = Instant::now();
    let req = server.close_consistency().unwrap();
    server_stage += ms(t);
    server_ms += server_stage;
    critical += stage_max + server_stage;

    let mut stage_max = 0.0f64;
    let mut server_stage = 0.0;
    for i in &list.survivors {
        let t = Instant::now();
        let m = clients.get_mut(i).unwrap().unmask(&req).unwrap();
        let d = ms(t);
        client_ms[*i as usize] += d;
        stage_max = stage_max.max(d);
        let t = Instant::now();
        server.receive_unmask(m).unwrap();
        server_stage += ms(t);
    }
    let t = Instant::now();
    let agg = server.finish().unwrap();
    server_stage += ms(t);
    server_ms += server_stage;
    critical += stage_max + server_stage;
    assert_eq!(agg.contributors.len(), n);
    Timing {
        total_ms: server_ms + client_ms.iter().sum::<f64>(),
        critical_ms: critical,
        server_ms,
        max_client_ms: client_ms.iter().cloned().fold(0.0, f64::max),
    }
}

fn main() {
    let dim: usize = arg("--dim", "100000").parse().unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    let ns: Vec<usize> = arg("--clients", "10,50")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let rng = SystemRandom::new();

    // Mask generation: one PRG expansion of 100 MB, in place.
    let words = 25_000_000;
    let mut acc = vec![0u32; words];
    let prg = MaskPrg::new(&[3u8; 32]);
    prg.apply(&mut acc, false);
    let t = Instant::now();
    for _ in 0..3 {
        prg.apply(&mut acc, false);
    }
    let mask_gb_s = (3 * words * 4) as f64 / 1e9 / t.elapsed().as_secs_f64();
    drop(acc);
    println!(
        "\nmask generation (AES-256-CTR via ring, added into the vector): {mask_gb_s:.2} GB/s on one core (target > 1 GB/s)"
    );

    let mut rows = Vec::new();
    println!(
        "\n{:<8} {:>4} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "mode",
        "n",
        "dim",
        "plain ms",
        "secure ms",
        "critical ms",
        "server ms",
        "client ms",
        "x plain"
    );
    for &n in &ns {
        let ids: Vec<Arc<Ed25519KeyPair>> = (0..n)
            .map(|_| {
                Arc::new(
                    Ed25519KeyPair::from_pkcs8(
                        Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        let roster = Arc::new(
            Roster::new(
                ids.iter()
                    .map(|k| k.public_key().as_ref().to_vec())
                    .collect(),
            )
            .unwrap(),
        );
        let q = Quantizer::new(1.0, n).unwrap();
        let floats: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..dim)
                    .map(|j| (((i * 7919 + j * 104_729) % 2001) as f32 / 1000.0) - 1.0)
                    .collect()
            })
            .collect();
        // Plain: quantize each vector and sum.
        let mut plain = f64::MAX;
        let mut encoded = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            encoded = floats
                .iter()
                .map(|f| q.encode(f).unwrap().words)
                .collect::<Vec<_>>();
            let mut sum = vec![0u32; dim];
            for e in &encoded {
                for (a, x) in sum.iter_mut().zip(e) {
                    *a = a.wrapping_add(*x);
                }
            }
            std::hint::black_box(&sum);
            plain = plain.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let k_plus = ((2.0 * (n as f64).log2()).ceil() as usize)
            .next_multiple_of(2)
            .min(n - 1);
        for (mode, k) in [("secagg", n - 1), ("secagg+", k_plus)] {
            if mode == "secagg+" && k >= n - 1 {
                continue;
            }
            let t = default_threshold(k, default_colluders(n));
            let mut best: Option<Timing> = None;
            for r in 0..rounds {
                let timing = secure_round(n, k, t, &encoded, &ids, &roster, r as u64);
                if best
                    .as_ref()
                    .is_none_or(|b| timing.critical_ms < b.critical_ms)
                {
                    best = Some(timing);
                }
            }
            let b = best.unwrap();
            println!(
                "{:<8} {:>4} {:>10} {:>10.2} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>8.1}",
                mode,
                n,
                dim,
                plain,
                b.total_ms,
                b.critical_ms,
                b.server_ms,
                b.max_client_ms,
                b.critical_ms / plain
            );
            rows.push(json_row(mode, n, k, dim, plain, &b));
        }
    }
    println!(
        "\n{{\"mask_gb_per_s\": {mask_gb_s:.3}, \"rounds\": [{}]}}",
        rows.join(", ")
    );
}

fn json_row(mode: &str, n: usize, k: usize, dim: usize, plain: f64, b: &Timing) -> String {
    format!(
        "{{\"mode\": \"{mode}\", \"clients\": {n}, \"neighbours\": {k}, \"dim\": {dim}, \"plain_ms\": {plain:.3}, \"secure_total_ms\": {:.3}, \"secure_critical_ms\": {:.3}, \"server_ms\": {:.3}, \"max_client_ms\": {:.3}}}",
        b.total_ms, b.critical_ms, b.server_ms, b.max_client_ms
    )
}
