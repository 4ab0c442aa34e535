//! The change log and a follower's import: real sled registries on disk, real Ed25519
//! keys. A follower replays the primary's log into its own registry and ends with the
//! same definitions, versions, aliases and tags; every way an event can be wrong is
//! refused without writing anything.

use quiver_registry::{
    ArtifactStore, ChangeSet, Error, Event, InputFeature, InputSchema, MetadataStore,
    ModelRegistry, NativeModel, Registration, Replication, Sequenced, SigningKey,
};
use serde_json::json;

struct Side {
    dir: tempfile::TempDir,
    store: MetadataStore,
    reg: ModelRegistry,
}

impl Side {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path().join("registry")).unwrap();
        let reg = store
            .models(ArtifactStore::new(dir.path().join("artifacts")))
            .unwrap();
        Self { dir, store, reg }
    }

    fn log(&self) -> Replication {
        Replication::new(&self.store, &self.reg).unwrap()
    }
}

fn model(w: f64) -> Vec<u8> {
    NativeModel::LogisticRegression {
        features: vec!["n".into()],
        weights: vec![w],
        intercept: 0.0,
        baseline: None,
        transform: None,
    }
    .to_json()
}

fn schema() -> InputSchema {
    InputSchema {
        features: vec![InputFeature {
            column: "n".into(),
            view: "stats".into(),
            view_version: 1,
            feature: "n".into(),
            dtype: "Float64".into(),
        }],
    }
}

/// Copy every event of `from` after `to`'s cursor into `to`.
fn follow(from: &Replication, to: &Replication) -> usize {
    let events = from.events_after(to.cursor().unwrap().seq, 1000).unwrap();
    for ev in &events {
        let artifact = ev.artifact().map(|d| from.artifact(d).unwrap());
        to.import(ev, artifact.as_deref()).unwrap();
    }
    events.len()
}

fn primary_with_history() -> (Side, SigningKey) {
    let p = Side::new();
    let key = SigningKey::generate(p.dir.path().join("k.key")).unwrap();
    p.reg.trust("alice", &key.public_key_hex()).unwrap();
    let mut c = ChangeSet::new();
    c.upsert("feature_view", "stats", json!({"features": ["n"]}));
    p.store.apply(c).unwrap();
    for w in [0.5, 0.7] {
        p.reg
            .register(
                Registration::new("fraud", model(w), schema()),
                "alice",
                &key,
            )
            .unwrap();
    }
    p.reg
        .move_alias("fraud", "champion", Some(1), None, "ops", "first")
        .unwrap();
    p.reg
        .move_alias("fraud", "champion", Some(2), Some(Some(1)), "ops", "better")
        .unwrap();
    p.reg
        .set_tags(
            "fraud",
            2,
            [("team".to_string(), "risk".to_string())].into(),
        )
        .unwrap();
    let mut c = ChangeSet::new();
    c.upsert("feature_view", "stats", json!({"features": ["n", "m"]}));
    c.upsert("feature_view", "other", json!({"features": []}));
    p.store.apply(c).unwrap();
    let mut c = ChangeSet::new();
    c.remove("feature_view", "other");
    p.store.apply(c).unwrap();
    (p, key)
}

#[test]
fn a_follower_replays_the_log_into_the_same_registry() {
    let (p, key) = primary_with_history();
    let log = p.log();
    assert_eq!(
        log.head().unwrap(),
        9,
        "the routing key, 3 applies, 2 versions, 2 moves, 1 retag"
    );
    let f = Side::new();
    f.reg.trust("alice", &key.public_key_hex()).unwrap();
    assert_eq!(follow(&log, &f.log()), 9);
    // The canary routing key came first, so replicas route as the primary does.
    assert!(p.reg.routing_key().is_some());
    assert_eq!(f.reg.routing_key(), p.reg.routing_key());

    // Same definitions at the same versions, same apply log.
    assert_eq!(f.store.applies().unwrap(), p.store.applies().unwrap());
    assert_eq!(
        f.store.current_all("feature_view").unwrap(),
        p.store.current_all("feature_view").unwrap()
    );
    assert_eq!(
        f.store
            .current("feature_view", "stats")
            .unwrap()
            .unwrap()
            .version,
        2
    );
    assert!(f.store.current("feature_view", "other").unwrap().is_none());
    // Same versions, signed by the primary, verified here; same aliases and history.
    assert_eq!(
        f.reg.versions("fraud").unwrap(),
        p.reg.versions("fraud").unwrap()
    );
    assert_eq!(
        f.reg.alias("fraud", "champion").unwrap().unwrap().version,
        2
    );
    assert_eq!(
        f.reg.alias_history("fraud", "champion").unwrap(),
        p.reg.alias_history("fraud", "champion").unwrap()
    );
    assert_eq!(
        f.reg.version("fraud", 2).unwrap().unwrap().tags["team"],
        "risk"
    );
    assert_eq!(f.reg.load("fraud", 2).unwrap().version.manifest.version, 2);
    let cursor = f.log().cursor().unwrap();
    assert_eq!((cursor.primary, cursor.seq), (Some(log.id().unwrap()), 9));

    // A follower's registry changes only by import: local writes are refused.
    let mut c = ChangeSet::new();
    c.upsert("feature_view", "local", json!({}));
    for refused in [
        f.store.apply(c).map(|_| ()),
        f.reg
            .move_alias("fraud", "champion", Some(1), None, "me", "")
            .map(|_| ()),
        f.reg
            .register(
                Registration::new("fraud", model(0.1), schema()),
                "alice",
                &key,
            )
            .map(|_| ()),
    ] {
        match refused {
            Err(Error::Replication(m)) => {
                assert!(m.contains("make the change on the primary"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(f.log().head().unwrap(), 9);

    // Later writes arrive as the next events; nothing is repeated.
    let mut strict = quiver_registry::RolloutPolicy::default();
    strict.challenger_percent = 50.0;
    p.reg.set_policy("fraud", Some(&strict)).unwrap();
    assert_eq!(follow(&log, &f.log()), 1);
    assert_eq!(f.reg.policy("fraud").unwrap(), Some(strict));
    p.reg.set_policy("fraud", None).unwrap();
    p.reg
        .move_alias(
            "fraud",
            "champion",
            Some(1),
            Some(Some(2)),
            "ops",
            "roll back",
        )
        .unwrap();
    assert_eq!(follow(&log, &f.log()), 2);
    assert_eq!(f.reg.policy("fraud").unwrap(), None);
    assert_eq!(follow(&log, &f.log()), 0);
    assert_eq!(
        f.reg.alias("fraud", "champion").unwrap().unwrap().version,
        1
    );

    // A follower can itself be followed: its own log holds the same changes.
    let g = Side::new();
    g.reg.trust("alice", &key.public_key_hex()).unwrap();
    assert_eq!(follow(&f.log(), &g.log()), 12);
    assert_eq!(g.reg.routing_key(), p.reg.routing_key());
    assert_eq!(
        g.reg.alias("fraud", "champion").unwrap().unwrap().version,
        1
    );
}

#[test]
fn a_follower_stores_a_version_it_does_not_trust_but_never_loads_it() {
    let (p, _key) = primary_with_history();
    let f = Side::new();
    // This replica trusts nobody: the versions are imported (the log stays whole) and
    // the alias points at them, but loading — the only way to serve — refuses.
    follow(&p.log(), &f.log());
    assert!(f.reg.version("fraud", 2).unwrap().is_some());
    match f.reg.load("fraud", 2) {
        Err(Error::Untrusted(m)) => assert!(m.contains("alice"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn events_out_of_order_from_another_registry_or_tampered_are_refused() {
    let (p, key) = primary_with_history();
    let log = p.log();
    let all = log.events_after(0, 100).unwrap();
    let f = Side::new();
    f.reg.trust("alice", &key.public_key_hex()).unwrap();
    let here = f.log();
    // The routing key first (a key that is not 32 bytes of hex is refused).
    let mut short = all[0].clone();
    if let Event::RoutingKey { key } = &mut short.event {
        key.pop();
    }
    assert!(here.import(&short, None).is_err());
    assert_eq!(here.cursor().unwrap().seq, 0);
    here.import(&all[0], None).unwrap();
    let events = &all[1..];
    let refused = |ev: &Sequenced, artifact: Option<&[u8]>, want: &str| {
        match here.import(ev, artifact) {
            Err(e) => assert!(e.to_string().contains(want), "{e}"),
            Ok(()) => panic!("imported {ev:?}"),
        }
        assert_eq!(here.cursor().unwrap().seq, 1, "nothing written");
        assert!(f.store.applies().unwrap().is_empty());
    };
    // Skipping the first event.
    refused(&events[1], None, "arrived after event 1");
    // A definition whose content does not hash to its recorded hash.
    let mut bad = events[0].clone();
    if let Event::Apply { definitions, .. } = &mut bad.event {
        definitions[0].definition = json!({"features": ["evil"]});
    }
    refused(&bad, None, "does not hash");
    // A version whose artifact is not the one signed.
    here.import(&events[0], None).unwrap();
    let v1 = &events[1];
    refused_artifact(&here, v1, &model(9.9));
    // Its signature over another manifest.
    let mut forged = v1.clone();
    if let Event::Version { version, .. } = &mut forged.event {
        version.signature = "00".repeat(64);
    }
    let bytes = log.artifact(v1.artifact().unwrap()).unwrap();
    match here.import(&forged, Some(&bytes)) {
        Err(Error::Tampered { reason, .. }) => assert!(reason.contains("signature"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The real one passes.
    here.import(v1, Some(&bytes)).unwrap();

    // Another registry's events, once this one follows `p`.
    let (q, _) = primary_with_history();
    let other = q.log().events_after(2, 1).unwrap();
    match here.import(&other[0], None) {
        Err(Error::Replication(m)) => assert!(m.contains("follows registry"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A registry with its own history cannot start following.
    match q.log().import(&events[0], None) {
        Err(Error::Replication(m)) => assert!(m.contains("its own history"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn refused_artifact(here: &Replication, ev: &Sequenced, artifact: &[u8]) {
    match here.import(ev, Some(artifact)) {
        Err(Error::Tampered { reason, .. }) => assert!(reason.contains("not the one"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_registry_written_before_the_log_gets_one_in_dependency_order() {
    let (p, key) = primary_with_history();
    let path = p.dir.path().join("registry");
    let want = p.log().events_after(0, 100).unwrap();
    let Side { dir, store, reg } = p;
    drop((store, reg));
    // Forget the log, as a registry of an older quiver has none.
    {
        let db = sled::Config::new().path(&path).open().unwrap();
        db.drop_tree("changes").unwrap();
        db.drop_tree("change_meta").unwrap();
        db.flush().unwrap();
    }
    let store = MetadataStore::open_waiting(&path, std::time::Duration::from_secs(5)).unwrap();
    let reg = store
        .models(ArtifactStore::new(dir.path().join("artifacts")))
        .unwrap();
    let log = Replication::new(&store, &reg).unwrap();
    let rebuilt = log.events_after(0, 100).unwrap();
    // The retag is not rebuilt: a version's event carries its tags as they are now;
    // nor is the routing key, which an older registry never had (it gets one with its
    // next write).
    assert_eq!(rebuilt.len(), want.len() - 2);
    // Applies first, then versions, then alias moves: a follower can import them all.
    let f = Side::new();
    f.reg.trust("alice", &key.public_key_hex()).unwrap();
    assert_eq!(follow(&log, &f.log()), want.len() - 2);
    assert_eq!(
        f.reg.alias("fraud", "champion").unwrap().unwrap().version,
        2
    );
    assert_eq!(
        f.reg.version("fraud", 2).unwrap().unwrap().tags["team"],
        "risk"
    );
    assert_eq!(f.store.applies().unwrap(), store.applies().unwrap());
}
