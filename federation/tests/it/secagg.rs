//! SecAgg / SecAgg+ rounds run message by message: exact sums with and without
//! dropouts, aborts below the threshold, a lying coordinator, broken and malicious
//! clients, and the uniformity of what the coordinator sees.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use quiver_federation::protocol::ProtocolError;
use quiver_federation::protocol::quantize::Quantizer;
use quiver_federation::protocol::secagg::{
    Aggregate, Client, ClientPolicy, Params, Roster, RoundId, Server, SurvivorList, UnmaskRequest,
    neighbours,
};
use quiver_federation::protocol::shamir;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Stages at which a client can fall silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Advertise,
    Share,
    Masked,
    Consistency,
    Unmask,
}

struct Banks {
    ids: Vec<Arc<Ed25519KeyPair>>,
    roster: Arc<Roster>,
}

fn banks(n: usize) -> Banks {
    let rng = SystemRandom::new();
    let ids: Vec<Arc<Ed25519KeyPair>> = (0..n)
        .map(|_| {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
        })
        .collect();
    let roster = Roster::new(
        ids.iter()
            .map(|k| k.public_key().as_ref().to_vec())
            .collect(),
    )
    .unwrap();
    Banks {
        ids,
        roster: Arc::new(roster),
    }
}

/// The policy a bank would need to accept `params`: exactly the colluders they withstand.
fn policy(params: &Params) -> ClientPolicy {
    ClientPolicy::against(params.clients, params.colluders_tolerated())
}

/// Every bank makes its keys for round `r` under `policy`; the coordinator takes them.
fn advertise(
    b: &Banks,
    params: &Params,
    policy: ClientPolicy,
    r: RoundId,
) -> (BTreeMap<u32, Client>, Server) {
    let mut server = Server::new(params.clone(), r, b.roster.clone()).unwrap();
    let mut clients = BTreeMap::new();
    for i in 0..params.clients as u32 {
        let (c, adv) = Client::new(
            i,
            b.ids[i as usize].clone(),
            b.roster.clone(),
            params.clone(),
            policy,
            r,
        )
        .unwrap();
        server.receive_keys(adv).unwrap();
        clients.insert(i, c);
    }
    (clients, server)
}

/// Stages 1 and 2 for every bank except `drop_after_share`; the survivor list.
fn share_and_mask(
    clients: &mut BTreeMap<u32, Client>,
    server: &mut Server,
    x: &[Vec<u32>],
    drop_after_share: &[u32],
) -> SurvivorList {
    for (i, ks) in server.close_keys().unwrap() {
        let m = clients.get_mut(&i).unwrap().share_keys(&ks).unwrap();
        server.receive_shares(m).unwrap();
    }
    for (i, s) in server.close_shares().unwrap() {
        if drop_after_share.contains(&i) {
            continue;
        }
        let m = clients
            .get_mut(&i)
            .unwrap()
            .masked_input(&s, &x[i as usize])
            .unwrap();
        server.receive_masked(m).unwrap();
    }
    server.close_masked().unwrap()
}

/// Stage 3 for every survivor; the unmask request.
fn sign_list(
    clients: &mut BTreeMap<u32, Client>,
    server: &mut Server,
    list: &SurvivorList,
) -> UnmaskRequest {
    for i in &list.survivors {
        let m = clients.get_mut(i).unwrap().consistency(list).unwrap();
        server.receive_consistency(m).unwrap();
    }
    server.close_consistency().unwrap()
}

fn round(r: u64) -> RoundId {
    let mut session = [0u8; 16];
    SystemRandom::new().fill(&mut session).unwrap();
    RoundId { session, round: r }
}

fn inputs(n: usize, len: usize, seed: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..len)
                .map(|j| {
                    (i as u32 + 1)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(j as u32 * 40_503 + seed)
                })
                .collect()
        })
        .collect()
}

fn plain_sum(inputs: &[Vec<u32>], who: &[u32]) -> Vec<u32> {
    let mut s = vec![0u32; inputs[0].len()];
    for &i in who {
        for (a, x) in s.iter_mut().zip(&inputs[i as usize]) {
            *a = a.wrapping_add(*x);
        }
    }
    s
}

/// Run one round; `silent[stage]` lists the clients that send nothing from that stage
/// on. Returns the server's result.
fn run(
    b: &Banks,
    params: &Params,
    inputs: &[Vec<u32>],
    silent: &BTreeMap<Stage, Vec<u32>>,
) -> Result<Aggregate, ProtocolError> {
    let r = round(1);
    let quiet = |stage: Stage, id: u32| {
        silent
            .iter()
            .any(|(s, ids)| *s <= stage && ids.contains(&id))
    };
    let mut server = Server::new(params.clone(), r, b.roster.clone())?;
    let mut clients = BTreeMap::new();
    for i in 0..params.clients as u32 {
        let (c, adv) = Client::new(
            i,
            b.ids[i as usize].clone(),
            b.roster.clone(),
            params.clone(),
            policy(params),
            r,
        )?;
        clients.insert(i, c);
        if !quiet(Stage::Advertise, i) {
            server.receive_keys(adv)?;
        }
    }
    let keys = server.close_keys()?;
    for (i, ks) in &keys {
        if quiet(Stage::Share, *i) {
            continue;
        }
        let m = clients.get_mut(i).unwrap().share_keys(ks)?;
        server.receive_shares(m)?;
    }
    let inbox = server.close_shares()?;
    for (i, shares) in &inbox {
        if quiet(Stage::Masked, *i) {
            continue;
        }
        let m = clients
            .get_mut(i)
            .unwrap()
            .masked_input(shares, &inputs[*i as usize])?;
        server.receive_masked(m)?;
    }
    let list = server.close_masked()?;
    for i in &list.survivors {
        if quiet(Stage::Consistency, *i) {
            continue;
        }
        let m = clients.get_mut(i).unwrap().consistency(&list)?;
        server.receive_consistency(m)?;
    }
    let req = server.close_consistency()?;
    for i in &list.survivors {
        if quiet(Stage::Unmask, *i) || quiet(Stage::Consistency, *i) {
            continue;
        }
        let m = clients.get_mut(i).unwrap().unmask(&req)?;
        server.receive_unmask(m)?;
    }
    server.finish()
}

#[test]
fn the_secure_sum_equals_the_plain_sum() {
    let n = 10;
    let b = banks(n);
    let x = inputs(n, 1000, 7);
    let all: Vec<u32> = (0..n as u32).collect();
    for params in [
        Params::secagg(n, 6, 1000),
        Params {
            clients: n,
            threshold: 3,
            neighbours: 4,
            len: 1000,
        },
    ] {
        let agg = run(&b, &params, &x, &BTreeMap::new()).unwrap();
        assert_eq!(agg.contributors, all);
        assert_eq!(agg.sum, plain_sum(&x, &all), "{params:?}");
        assert!(agg.dropped.is_empty());
    }
}

#[test]
fn dropouts_at_every_stage_up_to_k_minus_t_are_recovered() {
    // Plain SecAgg: k = n - 1 neighbours hold each bank's shares (never the bank
    // itself), so k - t banks may drop.
    let n = 8;
    let t = 4;
    let b = banks(n);
    let x = inputs(n, 300, 11);
    let params = Params::secagg(n, t, 300);
    for stage in [
        Stage::Advertise,
        Stage::Share,
        Stage::Masked,
        Stage::Consistency,
        Stage::Unmask,
    ] {
        for drops in 1..=n - 1 - t {
            let gone: Vec<u32> = (0..drops as u32).map(|i| (i * 3 + 1) % n as u32).collect();
            let silent = BTreeMap::from([(stage, gone.clone())]);
            let agg = run(&b, &params, &x, &silent)
                .unwrap_or_else(|e| panic!("{drops} dropped at {stage:?}: {e}"));
            // Clients that sent their masked input are in the sum even if they go
            // silent later; the others are not.
            let expect: Vec<u32> = (0..n as u32)
                .filter(|i| stage > Stage::Masked || !gone.contains(i))
                .collect();
            assert_eq!(agg.contributors, expect, "{stage:?}");
            assert_eq!(
                agg.sum,
                plain_sum(&x, &expect),
                "{drops} dropped at {stage:?}"
            );
        }
    }
    // SecAgg+ recovers dropouts too, within each neighbourhood's threshold.
    let n = 12;
    let b = banks(n);
    let x = inputs(n, 300, 3);
    let params = Params {
        clients: n,
        threshold: 4,
        neighbours: 6,
        len: 300,
    };
    for stage in [Stage::Share, Stage::Masked, Stage::Unmask] {
        let silent = BTreeMap::from([(stage, vec![2])]);
        let agg = run(&b, &params, &x, &silent).unwrap();
        assert_eq!(agg.sum, plain_sum(&x, &agg.contributors), "{stage:?}");
    }
}

#[test]
fn fewer_than_t_survivors_abort_before_anything_is_revealed() {
    let n = 6;
    let t = 4;
    let b = banks(n);
    let x = inputs(n, 50, 1);
    let params = Params::secagg(n, t, 50);
    for stage in [
        Stage::Advertise,
        Stage::Share,
        Stage::Masked,
        Stage::Consistency,
    ] {
        // Two silent leave 4 banks: each one's secrets have 3 other holders, fewer
        // than t = 4. Aborted by the coordinator (4 < t + 1 banks) or by the
        // clients themselves (fewer peers than t), before any share is revealed.
        let silent = BTreeMap::from([(stage, vec![0, 1])]);
        let e = run(&b, &params, &x, &silent).unwrap_err();
        assert!(
            matches!(e, ProtocolError::Aborted { have, need, .. } if have < need),
            "{stage:?}: {e}"
        );
    }
    // Too few unmask answers: the server cannot rebuild, and says so.
    let e = run(
        &b,
        &params,
        &x,
        &BTreeMap::from([(Stage::Unmask, vec![0, 1])]),
    )
    .unwrap_err();
    assert!(matches!(e, ProtocolError::Aborted { .. }), "{e}");
}

/// A round driven up to the unmask request, for tampering with what the coordinator
/// sends.
struct AtUnmask {
    clients: BTreeMap<u32, Client>,
    request: UnmaskRequest,
}

fn up_to_unmask(b: &Banks, params: &Params, drop_after_share: &[u32]) -> AtUnmask {
    let x = inputs(params.clients, params.len, 5);
    let (mut clients, mut server) = advertise(b, params, policy(params), round(9));
    let list = share_and_mask(&mut clients, &mut server, &x, drop_after_share);
    let request = sign_list(&mut clients, &mut server, &list);
    AtUnmask { clients, request }
}

#[test]
fn a_lying_coordinator_cannot_unmask_anyone() {
    let n = 6;
    let b = banks(n);
    let params = Params::secagg(n, 4, 64);
    let refused = |r: Result<_, ProtocolError>| matches!(r, Err(ProtocolError::Refused { .. }));

    // Client 5 dropped after sharing. The coordinator claims it both survived and
    // dropped, to get its seed share and its key share: refused.
    let mut at = up_to_unmask(&b, &params, &[5]);
    assert_eq!(at.request.dropped, vec![5]);
    let mut lie = at.request.clone();
    lie.dropped.push(0);
    assert!(refused(at.clients.get_mut(&0).unwrap().unmask(&lie)));
    // Once refused, the client answers nothing more, even an honest request.
    assert!(matches!(
        at.clients.get_mut(&0).unwrap().unmask(&at.request),
        Err(ProtocolError::OutOfOrder(_))
    ));

    // A survivor list other than the one signed: refused.
    let mut lie = at.request.clone();
    lie.survivors.retain(|v| *v != 1);
    lie.dropped.push(1);
    assert!(refused(at.clients.get_mut(&2).unwrap().unmask(&lie)));

    // Signatures forged or missing: fewer than t valid, refused.
    let mut lie = at.request.clone();
    lie.signatures.truncate(3);
    assert!(refused(at.clients.get_mut(&3).unwrap().unmask(&lie)));
    let mut lie = at.request.clone();
    for (_, s) in lie.signatures.iter_mut().take(3) {
        s[0] ^= 1;
    }
    assert!(refused(at.clients.get_mut(&4).unwrap().unmask(&lie)));

    // The honest request is answered once, with seed shares of survivors and key
    // shares of the dropped client only.
    let at2 = &mut up_to_unmask(&b, &params, &[5]);
    let resp = at2
        .clients
        .get_mut(&1)
        .unwrap()
        .unmask(&at2.request)
        .unwrap();
    let seeds: BTreeSet<u32> = resp.seed_shares.iter().map(|(o, _)| *o).collect();
    let keys: BTreeSet<u32> = resp.key_shares.iter().map(|(o, _)| *o).collect();
    assert!(seeds.is_disjoint(&keys));
    assert_eq!(keys, BTreeSet::from([5]));
    assert!(!seeds.contains(&5));
    assert!(matches!(
        at2.clients.get_mut(&1).unwrap().unmask(&at2.request),
        Err(ProtocolError::OutOfOrder(_))
    ));
}

#[test]
fn broken_and_malicious_clients_are_rejected_and_the_round_completes() {
    // A bad signature, a wrong number of shares, a share that does not open (tampered
    // or made for another round), a wrong-size vector, replays and a message of another
    // round: each is rejected and the round completes with the exact sum of the rest.
    let n = 12;
    let t = 6;
    let len = 256;
    let b = banks(n);
    let x = inputs(n, len, 99);
    let params = Params::secagg(n, t, len);
    let r = round(4);
    let mut server = Server::new(params.clone(), r, b.roster.clone()).unwrap();
    let mut clients = BTreeMap::new();
    for i in 0..n as u32 {
        let (c, mut adv) = Client::new(
            i,
            b.ids[i as usize].clone(),
            b.roster.clone(),
            params.clone(),
            policy(&params),
            r,
        )
        .unwrap();
        clients.insert(i, c);
        if i == 0 {
            // The same client's keys for another round: a replay, rejected.
            let (_, other) = Client::new(
                0,
                b.ids[0].clone(),
                b.roster.clone(),
                params.clone(),
                policy(&params),
                round(2),
            )
            .unwrap();
            assert!(server.receive_keys(other).is_err());
        }
        if i == 11 {
            adv.signature[0] ^= 1; // bad signature
            assert!(server.receive_keys(adv).is_err());
            continue;
        }
        server.receive_keys(adv).unwrap();
    }
    for (i, ks) in server.close_keys().unwrap() {
        let mut m = clients.get_mut(&i).unwrap().share_keys(&ks).unwrap();
        if i == 10 {
            m.shares.truncate(3); // wrong number of shares
            m.sign(&b.ids[10]);
            assert!(server.receive_shares(m).is_err());
            continue;
        }
        if i == 9 {
            m.shares[0].ciphertext[0] ^= 1; // a share that does not open
            m.sign(&b.ids[9]);
        }
        server.receive_shares(m).unwrap();
    }
    let mut accused_by = Vec::new();
    for (i, s) in server.close_shares().unwrap() {
        let mut m = clients
            .get_mut(&i)
            .unwrap()
            .masked_input(&s, &x[i as usize])
            .unwrap();
        if !m.rejected.is_empty() {
            accused_by.push(i);
        }
        if i == 8 {
            m.masked.truncate(len - 1); // wrong size
            m.sign(&b.ids[8]);
            assert!(server.receive_masked(m).is_err());
            continue;
        }
        server.receive_masked(m.clone()).unwrap();
        assert!(server.receive_masked(m).is_err(), "replay");
    }
    assert_eq!(accused_by.len(), 1);
    let list = server.close_masked().unwrap();
    // The accused (9) is left out; its accuser stays (one accusation is within what an
    // honest bank can report), so one bank cannot take out more than k - t others.
    assert!(!list.survivors.contains(&9));
    assert!(list.survivors.contains(&accused_by[0]));
    let out: BTreeSet<u32> = [8, 9, 10, 11].into_iter().collect();
    let expect: Vec<u32> = (0..n as u32).filter(|i| !out.contains(i)).collect();
    assert_eq!(list.survivors, expect);
    for i in &list.survivors {
        let m = clients.get_mut(i).unwrap().consistency(&list).unwrap();
        server.receive_consistency(m).unwrap();
    }
    let req = server.close_consistency().unwrap();
    for i in &list.survivors {
        let m = clients.get_mut(i).unwrap().unmask(&req).unwrap();
        server.receive_unmask(m).unwrap();
    }
    let agg = server.finish().unwrap();
    assert_eq!(agg.sum, plain_sum(&x, &expect));
}

#[test]
fn the_coordinators_view_of_one_input_is_uniform() {
    // 60 rounds of 3 clients; client 0's input is all zeros. The masked vector the
    // coordinator receives must look uniform: chi-square over the 256 values of the
    // top and bottom byte of every word (255 degrees of freedom; the 1e-6 tail starts
    // near 370).
    let n = 3;
    let len = 2048;
    let b = banks(n);
    let params = Params::secagg(n, 2, len);
    let mut top = [0u64; 256];
    let mut low = [0u64; 256];
    for rnd in 0..60 {
        let r = round(rnd);
        let mut server = Server::new(params.clone(), r, b.roster.clone()).unwrap();
        let mut clients = BTreeMap::new();
        for i in 0..n as u32 {
            let (c, adv) = Client::new(
                i,
                b.ids[i as usize].clone(),
                b.roster.clone(),
                params.clone(),
                policy(&params),
                r,
            )
            .unwrap();
            server.receive_keys(adv).unwrap();
            clients.insert(i, c);
        }
        let keys = server.close_keys().unwrap();
        for (i, ks) in &keys {
            let m = clients.get_mut(i).unwrap().share_keys(ks).unwrap();
            server.receive_shares(m).unwrap();
        }
        let inbox = server.close_shares().unwrap();
        let m = clients
            .get_mut(&0)
            .unwrap()
            .masked_input(&inbox[&0], &vec![0u32; len])
            .unwrap();
        for w in &m.masked {
            top[(w >> 24) as usize] += 1;
            low[(w & 0xff) as usize] += 1;
        }
    }
    let total = (60 * len) as f64;
    for (name, counts) in [("top", top), ("low", low)] {
        let e = total / 256.0;
        let chi2: f64 = counts.iter().map(|c| (*c as f64 - e).powi(2) / e).sum();
        assert!(chi2 < 370.0, "{name} byte: chi-square {chi2}");
    }
}

#[test]
fn floats_aggregate_through_the_ring_within_the_quantization_bound() {
    let n = 5;
    let b = banks(n);
    let q = Quantizer::new(0.5, n).unwrap();
    let updates: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            (0..200)
                .map(|j| ((i * 31 + j * 7) % 97) as f32 / 97.0 - 0.5)
                .collect()
        })
        .collect();
    let encoded: Vec<Vec<u32>> = updates.iter().map(|u| q.encode(u).unwrap().words).collect();
    let agg = run(&b, &Params::secagg(n, 3, 200), &encoded, &BTreeMap::new()).unwrap();
    let decoded = q.decode_sum(&agg.sum, n);
    for (j, d) in decoded.iter().enumerate() {
        let want: f64 = updates.iter().map(|u| f64::from(u[j])).sum();
        assert!(
            (d - want).abs() <= q.max_error(n) + 1e-6,
            "{j}: {d} vs {want}"
        );
    }
    // The neighbour graph of SecAgg+ is symmetric and has k neighbours each.
    let p = Params {
        clients: 20,
        threshold: 5,
        neighbours: 8,
        len: 1,
    };
    let seed = [7u8; 32];
    for i in 0..20u32 {
        let ns = neighbours(&p, &seed, i);
        assert_eq!(ns.len(), 8);
        for v in ns {
            assert!(neighbours(&p, &seed, v).contains(&i));
        }
    }
}

/// Three banks, plain SecAgg with t = 2: u = 0, v = 1 and C = 2, which colludes with the
/// coordinator. Every bank runs the default policy for a roster of three.
fn three_banks_advertised() -> (Banks, Params, RoundId, BTreeMap<u32, Client>, Server) {
    let b = banks(3);
    let params = Params::secagg(3, 2, 32);
    let r = round(3);
    let default = ClientPolicy::for_roster(3);
    assert_eq!(default.colluders, 1);
    let (clients, server) = advertise(&b, &params, default, r);
    (b, params, r, clients, server)
}

#[test]
fn a_coordinator_showing_a_bank_only_the_colluders_keys_is_refused() {
    // Attack 1: the coordinator hands u only its own keys and the colluder's, so that
    // u masks with C alone and shares its seed with C alone. u refuses to share at all.
    let (_b, _params, _r, mut clients, mut server) = three_banks_advertised();
    let all = server.close_keys().unwrap();
    let keys_for_u: Vec<_> = all[&0].iter().filter(|k| k.from != 1).cloned().collect();
    let e = clients
        .get_mut(&0)
        .unwrap()
        .share_keys(&keys_for_u)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Aborted {
                have: 1,
                need: 2,
                ..
            }
        ),
        "{e}"
    );
    // Nothing left u: it answers no later stage either.
    assert!(matches!(
        clients.get_mut(&0).unwrap().masked_input(&[], &[0; 32]),
        Err(ProtocolError::OutOfOrder(_))
    ));
    // Dropping u's own advert (so the graph could be chosen without u's fresh keys)
    // is refused too.
    let (_b, _p, _r, mut clients, mut server) = three_banks_advertised();
    let all = server.close_keys().unwrap();
    let without_own: Vec<_> = all[&1].iter().filter(|k| k.from != 1).cloned().collect();
    assert!(matches!(
        clients.get_mut(&1).unwrap().share_keys(&without_own),
        Err(ProtocolError::Refused { .. })
    ));
}

#[test]
fn a_coordinator_splitting_the_survivor_list_learns_nothing() {
    // Attack 2: u is shown the survivors {u, C} (so it would reveal v's mask key as a
    // dropout's) and v is shown {u, v, C} (so it would reveal its seed shares). With
    // C's shares the coordinator would hold both of v's secrets and unmask v's input.
    let (_b, _params, _r, mut clients, mut server) = three_banks_advertised();
    let x = inputs(3, 32, 5);
    let honest = share_and_mask(&mut clients, &mut server, &x, &[]);
    assert_eq!(honest.survivors, vec![0, 1, 2]);

    // u refuses a survivor list of two: with t = 2 a round needs t + 1 = 3 banks.
    let mut to_u = honest.clone();
    to_u.survivors = vec![0, 2];
    let e = clients.get_mut(&0).unwrap().consistency(&to_u).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Aborted {
                have: 2,
                need: 3,
                ..
            }
        ),
        "{e}"
    );
    // And since u left the round, no unmask request gets anything out of it: not the
    // forged one (v dropped), not any other.
    let forged = UnmaskRequest {
        round: honest.round,
        survivors: vec![0, 2],
        dropped: vec![1],
        signatures: Vec::new(),
    };
    assert!(matches!(
        clients.get_mut(&0).unwrap().unmask(&forged),
        Err(ProtocolError::OutOfOrder(_))
    ));

    // v and C sign the full list; v reveals seed shares, but never a share of its own
    // secrets (a bank holds none).
    let sig_v = clients.get_mut(&1).unwrap().consistency(&honest).unwrap();
    let sig_c = clients.get_mut(&2).unwrap().consistency(&honest).unwrap();
    let req = UnmaskRequest {
        round: honest.round,
        survivors: honest.survivors.clone(),
        dropped: vec![],
        signatures: vec![(1, sig_v.signature), (2, sig_c.signature.clone())],
    };
    // Two signatures on a three-bank list are too few (t + 1 = 3 needed).
    assert!(matches!(
        clients.get_mut(&1).unwrap().unmask(&req),
        Err(ProtocolError::Refused { .. })
    ));
    // Even had v answered, its shares are of u and C only; C (the colluder) holds one
    // share of v's seed, and one share is below t = 2: Shamir gives nothing.
    let (_, _, _, mut c2, mut s2) = three_banks_advertised();
    let list = share_and_mask(&mut c2, &mut s2, &x, &[]);
    let req = sign_list(&mut c2, &mut s2, &list);
    let from_v = c2.get_mut(&1).unwrap().unmask(&req).unwrap();
    assert!(from_v.seed_shares.iter().all(|(o, _)| *o != 1));
    assert!(from_v.key_shares.is_empty());
    let from_c = c2.get_mut(&2).unwrap().unmask(&req).unwrap();
    let v_seed: Vec<_> = from_c
        .seed_shares
        .iter()
        .filter(|(o, _)| *o == 1)
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(v_seed.len(), 1);
    assert!(matches!(
        shamir::combine(&v_seed, 2),
        Err(ProtocolError::NotEnoughShares { have: 1, need: 2 })
    ));
}

#[test]
fn a_plan_below_the_banks_own_policy_is_refused_before_any_key_exists() {
    let b = banks(5);
    let r = round(1);
    // Five banks, threshold 3 of 4 neighbours: 2·3 > 4 + 1, so one colluder is
    // withstood, two are not.
    let plan = Params::secagg(5, 3, 8);
    assert_eq!(plan.colluders_tolerated(), 1);
    // Bank 0 joining the plan under `policy`.
    let join = |policy: ClientPolicy| {
        Client::new(
            0,
            b.ids[0].clone(),
            b.roster.clone(),
            plan.clone(),
            policy,
            r,
        )
    };
    let e = join(ClientPolicy::against(5, 2)).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Refused { stage: "plan", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("colluding"), "{e}");
    // A bank's explicit minimums hold as well.
    let mut floor = ClientPolicy::against(5, 1);
    floor.min_threshold = 4;
    assert!(join(floor).is_err());
    let mut floor = ClientPolicy::against(5, 1);
    floor.min_neighbours = 5;
    assert!(join(floor).is_err());
    // The default policy for five banks accepts the plan.
    assert!(join(ClientPolicy::for_roster(5)).is_ok());
}

#[test]
fn the_secagg_plus_graph_comes_from_the_adverts_not_the_session_id() {
    // Same session and round, fresh keys: a different graph, so a coordinator cannot
    // pick a session id that places a bank next to its colluders.
    let n = 20;
    let b = banks(n);
    let params = Params {
        clients: n,
        threshold: 6,
        neighbours: 8,
        len: 4,
    };
    let r = round(1);
    let graph_of = || {
        let (mut clients, mut server) = advertise(&b, &params, policy(&params), r);
        let mut graph = BTreeMap::new();
        for (i, ks) in server.close_keys().unwrap() {
            let m = clients.get_mut(&i).unwrap().share_keys(&ks).unwrap();
            let to: BTreeSet<u32> = m.shares.iter().map(|s| s.to).collect();
            assert_eq!(to.len(), 8);
            server.receive_shares(m).unwrap();
            graph.insert(i, to);
        }
        graph
    };
    assert_ne!(graph_of(), graph_of());
}

/// Every survivor of a full round reveals; `corrupt` (if any) flips a byte of every
/// seed share it reveals and signs the result, so only the commitments can tell.
fn unmask_all(
    b: &Banks,
    clients: &mut BTreeMap<u32, Client>,
    server: &mut Server,
    req: &UnmaskRequest,
    corrupt: Option<u32>,
) -> Aggregate {
    for i in &req.survivors {
        let mut m = clients.get_mut(i).unwrap().unmask(req).unwrap();
        if Some(*i) == corrupt {
            for (_, s) in m.seed_shares.iter_mut() {
                s.y[0] ^= 0x5a;
            }
            m.sign(&b.ids[*i as usize]);
        }
        server.receive_unmask(m).unwrap();
    }
    server.finish().unwrap()
}

#[test]
fn one_bad_share_anywhere_does_not_abort_the_round() {
    // Five banks, t = 3: each secret has four holders. Client 1 reveals a corrupted
    // seed share of every survivor, properly signed. Each share is checked against the
    // commitment its owner signed at stage 1, so client 1's are dropped and it is named.
    let n = 5;
    let b = banks(n);
    let params = Params::secagg(n, 3, 40);
    let x = inputs(n, 40, 17);
    let (mut clients, mut server) = advertise(&b, &params, policy(&params), round(8));
    let list = share_and_mask(&mut clients, &mut server, &x, &[]);
    let req = sign_list(&mut clients, &mut server, &list);
    let agg = unmask_all(&b, &mut clients, &mut server, &req, Some(1));
    let all: Vec<u32> = (0..n as u32).collect();
    assert_eq!(agg.sum, plain_sum(&x, &all));
    assert!(!agg.misbehaving.is_empty());
    assert!(
        agg.misbehaving.iter().all(|m| m.client == 1),
        "{:?}",
        agg.misbehaving
    );
}

#[test]
fn a_bank_corrupting_every_seed_share_it_reveals_among_twenty_is_named_and_the_sum_exact() {
    // Plain SecAgg at n = 20, t = 13: a search over t-subsets of the 19 revealed shares
    // (C(19, 13) = 27,132 per owner) is what the old rebuild would have needed. With
    // commitments each bad share costs one hash.
    let n = 20;
    let b = banks(n);
    let params = Params::secagg(n, 13, 32);
    assert!(ClientPolicy::for_roster(n).check(&params).is_ok());
    let x = inputs(n, 32, 5);
    let (mut clients, mut server) = advertise(&b, &params, ClientPolicy::for_roster(n), round(12));
    let list = share_and_mask(&mut clients, &mut server, &x, &[]);
    let req = sign_list(&mut clients, &mut server, &list);
    let agg = unmask_all(&b, &mut clients, &mut server, &req, Some(4));
    let all: Vec<u32> = (0..n as u32).collect();
    assert_eq!(agg.sum, plain_sum(&x, &all));
    // One named entry per owner whose share it corrupted (everyone but itself).
    assert_eq!(agg.misbehaving.len(), n - 1);
    assert!(
        agg.misbehaving
            .iter()
            .all(|m| m.client == 4 && m.reason.contains("commitment"))
    );
}

#[test]
fn a_bank_accusing_all_its_neighbours_is_excluded_alone() {
    // n = 10, plain SecAgg with the default threshold: bank 3 reports every neighbour's
    // share as bad. An honest bank with more than k - t bad shares stops instead, so
    // the report itself is the misbehaviour: bank 3 is excluded and named, and the
    // other nine are summed.
    let n = 10;
    let b = banks(n);
    let params = Params::secagg(n, 7, 16);
    let x = inputs(n, 16, 3);
    let (mut clients, mut server) = advertise(&b, &params, ClientPolicy::for_roster(n), round(13));
    for (i, ks) in server.close_keys().unwrap() {
        let m = clients.get_mut(&i).unwrap().share_keys(&ks).unwrap();
        server.receive_shares(m).unwrap();
    }
    for (i, s) in server.close_shares().unwrap() {
        let mut m = clients
            .get_mut(&i)
            .unwrap()
            .masked_input(&s, &x[i as usize])
            .unwrap();
        if i == 3 {
            m.rejected = (0..n as u32).filter(|v| *v != 3).collect();
            m.sign(&b.ids[3]);
        }
        server.receive_masked(m).unwrap();
    }
    let list = server.close_masked().unwrap();
    let nine: Vec<u32> = (0..n as u32).filter(|i| *i != 3).collect();
    assert_eq!(list.survivors, nine);
    assert_eq!(server.misbehaving().len(), 1);
    assert_eq!(server.misbehaving()[0].client, 3);
    let req = sign_list(&mut clients, &mut server, &list);
    let agg = unmask_all(&b, &mut clients, &mut server, &req, None);
    assert_eq!(agg.sum, plain_sum(&x, &nine));
    assert_eq!(agg.dropped, vec![3]);
}

#[test]
fn a_bank_dealing_bad_shares_to_more_than_k_minus_t_holders_only_leaves_itself_out() {
    // n = 10, t = 7: bank 5 sends four of its nine holders shares that do not open.
    // Each of the four accuses it (one accusation each, within what an honest bank can
    // report), so bank 5 is left out; only five holders kept its shares, fewer than t,
    // so its mask key cannot be rebuilt: the five survivors that masked with it reveal
    // their pairwise seeds with it instead, and the round completes.
    let n = 10;
    let b = banks(n);
    let params = Params::secagg(n, 7, 24);
    let x = inputs(n, 24, 8);
    let (mut clients, mut server) = advertise(&b, &params, ClientPolicy::for_roster(n), round(14));
    for (i, ks) in server.close_keys().unwrap() {
        let mut m = clients.get_mut(&i).unwrap().share_keys(&ks).unwrap();
        if i == 5 {
            for s in m.shares.iter_mut().take(4) {
                s.ciphertext[3] ^= 0x40;
            }
            m.sign(&b.ids[5]);
        }
        server.receive_shares(m).unwrap();
    }
    for (i, s) in server.close_shares().unwrap() {
        let m = clients
            .get_mut(&i)
            .unwrap()
            .masked_input(&s, &x[i as usize])
            .unwrap();
        server.receive_masked(m).unwrap();
    }
    let list = server.close_masked().unwrap();
    let nine: Vec<u32> = (0..n as u32).filter(|i| *i != 5).collect();
    assert_eq!(list.survivors, nine);
    let req = sign_list(&mut clients, &mut server, &list);
    let agg = unmask_all(&b, &mut clients, &mut server, &req, None);
    assert_eq!(agg.sum, plain_sum(&x, &nine));
    assert_eq!(agg.dropped, vec![5]);
}
