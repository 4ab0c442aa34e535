use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Fixture, fixture};
use quiver_registry::{
    InputFeature, InputSchema, ModelServer, NativeModel, Registration, RolloutPolicy,
};

fn fx() -> Fixture {
    fixture("ci")
}

fn register(fx: &Fixture, intercept: f64) -> u64 {
    let m = NativeModel::LogisticRegression {
        features: vec!["a".into(), "b".into()],
        weights: vec![0.5, -0.25],
        intercept,
        baseline: None,
        transform: None,
    };
    let f = |c: &str| InputFeature {
        column: c.into(),
        view: "v".into(),
        view_version: 1,
        feature: c.into(),
        dtype: "Float64".into(),
    };
    let input = InputSchema {
        features: vec![f("a"), f("b")],
    };
    fx.reg
        .register(
            Registration::new("fraud", m.to_json(), input),
            "ci",
            &fx.key,
        )
        .unwrap()
        .manifest
        .version
}

/// Versions with intercepts `champion` and `challenger` under those aliases, served
/// under `policy`.
fn canary(
    fx: &Fixture,
    champion: f64,
    challenger: f64,
    policy: RolloutPolicy,
) -> (u64, u64, Arc<ModelServer>) {
    let v1 = register(fx, champion);
    let v2 = register(fx, challenger);
    fx.reg
        .move_alias("fraud", "champion", Some(v1), None, "ci", "")
        .unwrap();
    fx.reg
        .move_alias("fraud", "challenger", Some(v2), None, "ci", "canary")
        .unwrap();
    (
        v1,
        v2,
        ModelServer::new(fx.reg.clone(), "fraud", policy).unwrap(),
    )
}

fn wait_for(server: &ModelServer, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.deployment().champion.as_ref().map(|c| c.version()) != Some(version) {
        assert!(
            Instant::now() < deadline,
            "version {version} never went live"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn promotions_swap_in_place_without_failed_requests() {
    let fx = fx();
    let v1 = register(&fx, -3.0);
    let v2 = register(&fx, -1.0);
    fx.reg
        .move_alias("fraud", "champion", Some(v1), None, "ci", "start")
        .unwrap();
    let server = ModelServer::new(fx.reg.clone(), "fraud", RolloutPolicy::default()).unwrap();
    let _watch = server.watch();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (server, stop, failures, served) = (
                server.clone(),
                stop.clone(),
                failures.clone(),
                served.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("user-{c}-{i}");
                    match server.score(key.as_bytes(), &[1.0, 2.0], false) {
                        Ok(s) if (0.0..=1.0).contains(&s.score) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for round in 0..20 {
        let v = if round % 2 == 0 { v2 } else { v1 };
        fx.reg
            .move_alias("fraud", "champion", Some(v), None, "ci", "swap")
            .unwrap();
        wait_for(&server, v);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 100);
}

#[test]
fn canary_share_is_stable_by_entity() {
    let fx = fx();
    let policy = {
        let mut c = RolloutPolicy::default();
        c.challenger_percent = 10.0;
        c.min_requests = u64::MAX;
        c
    };
    let (_, v2, server) = canary(&fx, -3.0, -3.0 + 1e-9, policy);
    let mut to_challenger = 0;
    for i in 0..20_000 {
        let key = format!("{i}");
        let a = server.score(key.as_bytes(), &[0.0, 0.0], false).unwrap();
        let b = server.score(key.as_bytes(), &[5.0, 1.0], false).unwrap();
        assert_eq!(a.version, b.version, "key {key} moved between versions");
        if a.version == v2 {
            to_challenger += 1;
        }
    }
    let share = to_challenger as f64 / 20_000.0;
    assert!((share - 0.10).abs() < 0.01, "challenger share {share}");
}

#[test]
fn a_bad_challenger_is_rolled_back_with_its_reason() {
    let fx = fx();
    let policy = {
        let mut c = RolloutPolicy::default();
        c.challenger_percent = 50.0;
        c.min_requests = 100;
        c.check_every = 50;
        c
    };
    // The challenger scores near 1: a very different distribution.
    let (_, v2, server) = canary(&fx, -3.0, 6.0, policy);
    for i in 0..2_000 {
        let x = [(i % 7) as f64, (i % 3) as f64];
        server.score(format!("{i}").as_bytes(), &x, false).unwrap();
        if server.deployment().challenger.is_none() {
            break;
        }
    }
    let d = server.deployment();
    assert!(d.challenger.is_none(), "the challenger still serves");
    assert_eq!(d.challenger_percent, 0.0);
    let rb = server.rollbacks();
    assert_eq!(rb.len(), 1);
    assert!(rb[0].reason.contains("score PSI"), "{}", rb[0].reason);
    let h = fx.reg.alias_history("fraud", "challenger").unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.from, last.to, last.by.as_str()),
        (Some(v2), None, "rollout")
    );
    assert!(
        last.reason.starts_with("automatic rollback: score PSI"),
        "{}",
        last.reason
    );
}

#[test]
fn an_erroring_challenger_is_rolled_back() {
    let fx = fx();
    let policy = {
        let mut c = RolloutPolicy::default();
        c.challenger_percent = 100.0;
        c.min_requests = 100;
        c.check_every = 10;
        c
    };
    let (_, _, server) = canary(&fx, -3.0, -3.0, policy);
    for i in 0..100 {
        // Every 10th request sends one input too few.
        let x: &[f64] = if i % 10 == 0 { &[1.0] } else { &[1.0, 2.0] };
        let _ = server.score(format!("{i}").as_bytes(), x, false);
    }
    assert!(server.deployment().challenger.is_none());
    assert!(
        server.rollbacks()[0]
            .reason
            .starts_with("error rate 10.00%"),
        "{:?}",
        server.rollbacks()
    );
}

#[test]
fn a_tampered_promotion_is_refused_and_the_old_version_keeps_serving() {
    let fx = fx();
    let v1 = register(&fx, -3.0);
    let v2 = register(&fx, 2.0);
    fx.reg
        .move_alias("fraud", "champion", Some(v1), None, "ci", "")
        .unwrap();
    let server = ModelServer::new(fx.reg.clone(), "fraud", RolloutPolicy::default()).unwrap();
    let digest = fx
        .reg
        .version("fraud", v2)
        .unwrap()
        .unwrap()
        .manifest
        .artifact_sha256;
    std::fs::write(fx.reg.artifacts().path_of(&digest).unwrap(), b"{}").unwrap();
    fx.reg
        .move_alias("fraud", "champion", Some(v2), None, "ci", "promote")
        .unwrap();
    let d = server.reload().unwrap();
    assert_eq!(d.champion.as_ref().unwrap().version(), v1);
    assert_eq!(server.refused_loads.load(Ordering::Relaxed), 1);
    assert_eq!(server.score(b"u", &[1.0, 1.0], true).unwrap().version, v1);
}

#[test]
fn one_tenants_crafted_traffic_cannot_roll_the_challenger_back_for_everyone() {
    // The challenger equals the champion (same intercept): only crafted inputs make
    // its scores differ. Tenant `evil` scores keys routed to the challenger with
    // extreme features; tenants `a` and `b` send ordinary traffic.
    let fx = fx();
    let policy = {
        let mut c = RolloutPolicy::default();
        c.challenger_percent = 50.0;
        // Enough honest traffic that its own sampling noise stays under the PSI bound
        // (with 100 requests a side, two samples of one distribution over 15 scores
        // differ by a PSI near 0.3: the test failed about one run in ten).
        c.min_requests = 1_000;
        c.check_every = 50;
        // Only the scores are judged here, not a loaded machine's latency.
        c.max_p99 = std::time::Duration::from_secs(60);
        c
    };
    let (_, v2, server) = canary(&fx, -1.0, -1.0, policy);
    let d = server.deployment();
    let challenger_keys: Vec<String> = (0..100_000)
        .map(|i| format!("k{i}"))
        .filter(|k| server.route(&d, k.as_bytes()).map(|s| s.version()) == Some(v2))
        .take(3_000)
        .collect();
    for (i, k) in challenger_keys.iter().enumerate() {
        let ordinary = [(i % 5) as f64, (i % 3) as f64];
        let tenant = ["a", "b"][i % 2];
        server
            .score_as(tenant, format!("o{i}").as_bytes(), &ordinary, false)
            .unwrap();
        // Scores near 1 on the challenger only: alone, a PSI far over the policy.
        server
            .score_as("evil", k.as_bytes(), &[40.0, -40.0], false)
            .unwrap();
    }
    assert!(
        server.rollbacks().is_empty(),
        "one tenant rolled the challenger back: {:?}",
        server.rollbacks()
    );
    assert_eq!(
        server.deployment().challenger.as_ref().map(|c| c.version()),
        Some(v2),
        "the challenger stays"
    );
    // The same traffic from one tenant alone (nobody else scoring) is judged as it is.
    let fx2 = fixture("ci");
    let (_, _, alone) = canary(&fx2, -1.0, -1.0, {
        let mut c = RolloutPolicy::default();
        c.challenger_percent = 50.0;
        c.min_requests = 100;
        c.check_every = 50;
        c
    });
    let d2 = alone.deployment();
    for i in 0..4_000 {
        let k = format!("k{i}");
        let on_challenger = alone.route(&d2, k.as_bytes()).map(|s| s.alias) == Some("challenger");
        let x = if on_challenger {
            [40.0, -40.0]
        } else {
            [(i % 5) as f64, (i % 3) as f64]
        };
        alone.score_as("only", k.as_bytes(), &x, false).unwrap();
        if alone.deployment().challenger.is_none() {
            break;
        }
    }
    let rb = alone.rollbacks();
    assert_eq!(rb.len(), 1);
    assert!(
        rb[0]
            .reason
            .contains("(challenger traffic by tenant: only 100%)"),
        "{}",
        rb[0].reason
    );
}

#[test]
fn canary_routing_is_keyed_by_the_registrys_secret() {
    // An unkeyed hash let a tenant compute which keys the challenger serves. Two
    // registries (two secrets) route the same keys differently; one registry routes a
    // key the same way every time, and only with its key known.
    let (fx1, fx2) = (fx(), fx());
    let policy = {
        let mut c = RolloutPolicy::default();
        c.challenger_percent = 50.0;
        c
    };
    let (_, _, s1) = canary(&fx1, -1.0, 1.0, policy.clone());
    let (_, _, s2) = canary(&fx2, -1.0, 1.0, policy);
    let (d1, d2) = (s1.deployment(), s2.deployment());
    let key1 = d1
        .routing_key
        .expect("a registry with models has a routing key");
    assert_ne!(Some(key1), d2.routing_key);
    let side = |s: &ModelServer, d: &quiver_registry::Deployment, k: &str| {
        s.route(d, k.as_bytes()).unwrap().alias
    };
    let differ = (0..2_000)
        .filter(|i| side(&s1, &d1, &format!("u{i}")) != side(&s2, &d2, &format!("u{i}")))
        .count();
    assert!((800..1_200).contains(&differ), "{differ} of 2000 differ");
    for i in 0..200 {
        let k = format!("u{i}");
        assert_eq!(side(&s1, &d1, &k), side(&s1, &s1.deployment(), &k));
        let bucket = quiver_registry::routing_bucket(&key1, k.as_bytes());
        assert_eq!(side(&s1, &d1, &k) == "challenger", bucket < 5_000);
    }
}
