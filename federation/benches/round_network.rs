//! A federated round over the network: the real coordinator and N workers on
//! loopback, talking gRPC over mutual TLS, against a plain round that uploads the same
//! vectors over the same transport and sums them.
//!
//! ```text
//! cargo bench -p quiver-federation --bench round_network
//! cargo bench -p quiver-federation --bench round_network -- --clients 10,50 --dim 100000 --rounds 2 --neighbours 0
//! ```
//!
//! The model is an MLP sized to `--dim` parameters (96 features, hidden width to
//! match) with one local SGD step on 64 rows, so a round's time is the protocol and
//! the transport, not training. Per round the coordinator records each stage's wall
//! time: `keys` (plan broadcast, the step of training, key adverts), `shares`, `masked`
//! (masking and upload of the masked vector), `consistency`, `unmask`. The secure
//! cost is `shares + masked + consistency + unmask`: everything secure aggregation
//! adds once banks have trained. The plain round is what a coordinator without it
//! does: each of the N banks uploads its vector of `dim` words over the same mTLS gRPC
//! channel (sent to the coordinator's Submit, which reads it whole before refusing it)
//! and the coordinator sums them.
//!
//! All N workers share this machine's cores, so their masking work, which runs in
//! parallel at N banks in a deployment, is serialized here: the secure figure is an
//! upper bound. `--neighbours K` runs SecAgg+ with K neighbours (0: plain SecAgg).
//! Output: a table and one JSON line.

use std::time::{Duration, Instant};

use quiver_federation::aggregate::Strategy;
use quiver_federation::dp::Budget;
use quiver_federation::service::rpc::{self, Stage, Submission, pb};
use quiver_federation::service::simulate::{BankSource, SimBank, simulate};
use quiver_federation::service::worker::BankData;
use quiver_federation::service::{Coordinator, CoordinatorConfig, PrivacyPolicy, pki};
use quiver_federation::train::Architecture;
use rand::{Rng, SeedableRng};

const FEATURES: usize = 96;
const STAGES: [&str; 5] = ["keys", "shares", "masked", "consistency", "unmask"];

mod common;
use common::arg;

fn bank(rows: usize, seed: u64) -> BankData {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let columns = (0..FEATURES)
        .map(|_| (0..rows).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect())
        .collect();
    let labels = (0..rows)
        .map(|_| f64::from(u8::from(rng.random::<f64>() < 0.1)))
        .collect();
    BankData {
        columns,
        labels,
        training_set: None,
        views: Vec::new(),
    }
}

fn config(hidden: usize, rounds: u64, neighbours: Option<usize>) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    c.tls = pki::TlsFiles {
        ca: "ca.pem".into(),
        cert: "coordinator.pem".into(),
        key: "coordinator.key".into(),
    };
    c.features = (0..FEATURES).map(|i| format!("f{i}")).collect();
    c.label = "y".into();
    c.architecture = Architecture::Mlp { hidden };
    c.rounds = rounds;
    c.neighbours = neighbours;
    c.strategy = Strategy::FedAvg;
    c.local.learning_rate = 0.01;
    c.local.local_steps = 1;
    c.local.batch_size = 32;
    c.local.prox_mu = 0.0;
    c.local.dp = None;
    c.update_clip = 1.0;
    c.max_rows = 1_000_000;
    c.budget = Budget::default();
    c.deadlines.train_s = 120.0;
    c.deadlines.stage_s = 120.0;
    c.deadlines.join_s = 60.0;
    c.seed = 1;
    c
}

/// Wall time of `n` banks uploading `words` words each, concurrently, over mTLS gRPC
/// to a coordinator that reads each message whole (then refuses it: wrong round).
async fn plain_upload(dir: &std::path::Path, n: usize, words: usize, hidden: usize) -> f64 {
    let names: Vec<String> = (0..n).map(|i| format!("bank_{i}")).collect();
    let fed = pki::init(dir, &names).expect("pki");
    let mut cfg = config(hidden, 1, None);
    cfg.metrics_listen = None;
    cfg.roster = fed.roster.clone();
    let coord = Coordinator::start(cfg, dir).await.expect("coordinator");
    let url = format!("https://{}", coord.addr());
    let mut clients = Vec::new();
    for name in &names {
        let pem = pki::TlsFiles {
            ca: "ca.pem".into(),
            cert: format!("{name}.pem").into(),
            key: format!("{name}.key").into(),
        }
        .read(dir)
        .expect("tls");
        let ch = pki::coordinator_endpoint(&url, &pem)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        clients.push((name.clone(), rpc::client(ch)));
    }
    let masked = vec![0xA5A5_A5A5u32; words];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let calls = clients.iter().map(|(name, c)| {
            let mut c = c.clone();
            let sub = Submission {
                bank: name.clone(),
                round: 999,
                stage: Some(Stage::Masked(pb::MaskedInput {
                    masked: masked.clone(),
                    ..Default::default()
                })),
            };
            async move { c.submit(sub).await }
        });
        for ack in futures_join(calls).await {
            assert!(!ack.expect("submit").into_inner().accepted);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    drop(coord);
    best
}

async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let clients: Vec<usize> = arg("--clients", "10,50")
        .split(',')
        .map(|s| s.parse().expect("--clients"))
        .collect();
    let dim: usize = arg("--dim", "100000").parse().expect("--dim");
    let rounds: u64 = arg("--rounds", "2").parse().expect("--rounds");
    let k: usize = arg("--neighbours", "0").parse().expect("--neighbours");
    // MLP parameters: hidden·(features + 2) + 1.
    let hidden = ((dim.saturating_sub(1)) / (FEATURES + 2)).max(1);
    let params = hidden * (FEATURES + 2) + 1;
    let words = params + 1 + 4; // update, loss, counts
    println!(
        "{:>4} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>9} {:>9}",
        "N",
        "k",
        "params",
        "keys_s",
        "shares_s",
        "masked_s",
        "consist_s",
        "unmask_s",
        "secure_s",
        "plain_s",
        "ratio",
        "up_MB_sec",
        "up_MB_pl"
    );
    let mut rows = Vec::new();
    for &n in &clients {
        let neighbours = (k > 0 && k < n - 1).then_some(k);
        let dir = tempfile::tempdir().expect("tempdir");
        let banks = (0..n)
            .map(|i| SimBank {
                name: format!("bank_{i}"),
                source: BankSource::Data(bank(80, i as u64)),
                privacy: {
                    let mut c = PrivacyPolicy::default();
                    c.budget = Budget::default();
                    c.require_dp = false;
                    c
                },
                offline: false,
                device: Default::default(),
            })
            .collect();
        let res = simulate(dir.path(), config(hidden, rounds, neighbours), banks)
            .await
            .expect("simulation");
        let train: Vec<_> = res.summary.history.iter().filter(|h| h.round > 0).collect();
        let mut stage = [0.0f64; 5];
        for h in &train {
            for (i, s) in h.stage_seconds.iter().enumerate() {
                stage[i] += s / train.len() as f64;
            }
        }
        let secure = stage[1..].iter().sum::<f64>();
        let m = res.metrics.as_deref().unwrap_or_default();
        // Per training round (round 0's statistics vector, 3·96 words per bank, is
        // counted in too: under 1% here).
        let up_secure: f64 = STAGES
            .iter()
            .map(|s| {
                metric(
                    m,
                    &format!("quiver_fed_received_bytes_total{{stage=\"{s}\"}}"),
                )
            })
            .sum::<f64>()
            / train.len() as f64
            / 1e6;
        // Plain: the same vectors uploaded, then summed.
        let up_dir = tempfile::tempdir().expect("tempdir");
        let upload = plain_upload(up_dir.path(), n, words, hidden).await;
        let vectors: Vec<Vec<u32>> = (0..n)
            .map(|i| {
                (0..words as u32)
                    .map(|w| w.wrapping_mul(i as u32 + 1))
                    .collect()
            })
            .collect();
        let t = Instant::now();
        let mut sum = vec![0u32; words];
        for v in &vectors {
            for (s, x) in sum.iter_mut().zip(v) {
                *s = s.wrapping_add(*x);
            }
        }
        std::hint::black_box(&sum);
        let plain = upload + t.elapsed().as_secs_f64();
        let up_plain = (n * words * 4) as f64 / 1e6;
        let kk = neighbours.unwrap_or(n - 1);
        println!(
            "{:>4} {:>4} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>9.3} {:>6.2} {:>9.2} {:>9.2}",
            n,
            kk,
            params,
            stage[0],
            stage[1],
            stage[2],
            stage[3],
            stage[4],
            secure,
            plain,
            secure / plain,
            up_secure,
            up_plain
        );
        rows.push(format!(
            "{{\"clients\":{n},\"neighbours\":{kk},\"params\":{params},\"keys_s\":{:.4},\"shares_s\":{:.4},\"masked_s\":{:.4},\"consistency_s\":{:.4},\"unmask_s\":{:.4},\"secure_s\":{secure:.4},\"plain_s\":{plain:.4},\"ratio\":{:.3},\"uploaded_mb_secure\":{up_secure:.3},\"uploaded_mb_plain\":{up_plain:.3}}}",
            stage[0],
            stage[1],
            stage[2],
            stage[3],
            stage[4],
            secure / plain
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{{\"bench\":\"round_network\",\"dim\":{dim},\"rounds\":{rounds},\"cores\":{},\"rows\":[{}]}}",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        rows.join(",")
    );
}
