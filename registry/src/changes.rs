//! The change log: every write of the registry (an apply, a model version, an alias
//! move, a version's new tags, a rollout policy) numbered in commit order, written in the same
//! transaction as the write itself. A follower (a serving replica, docs/replicas.md)
//! replays it in order into its own registry, so it holds the same definitions at the
//! same version numbers, the same model versions and the same aliases.
//!
//! Layout (sled trees of the registry database):
//!
//! ```text
//! changes      seq (u64 BE)  -> Change (JSON)    every write, in commit order, from 1
//! change_meta  "head"        -> u64 BE           the last seq written here
//!              "id"          -> registry id      random, made once with the log
//!              "primary"     -> registry id      a follower: the registry it follows
//!              "cursor"      -> u64 BE           a follower: the primary's last seq imported
//! ```
//!
//! # Guarantees
//! - A change and its log entry commit together, so the log never misses a write nor
//!   names one that did not happen; seqs have no gaps.
//! - [`Replication::import`] writes an event's records, this registry's own log entry
//!   and the cursor in one transaction, and only for the seq after the cursor: a
//!   follower that stops anywhere resumes at the next event, never repeats or skips one.
//! - Import never trusts the sender for integrity: definitions must hash to their
//!   recorded hash, a version's signature must match its manifest and its artifact
//!   must hash to the manifest's digest. Whether the signer is *trusted* is checked
//!   where a version is served ([`crate::ModelRegistry::load`]), against this
//!   registry's own signers, as on the primary: an imported version signed by a key
//!   this replica does not trust is stored but never served.
//! - A registry written before the log existed gets its log built from its records
//!   when first opened (applies, then versions, then alias moves by time), which keeps
//!   every dependency in order (a version after the views it reads, an alias move
//!   after its version).

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree,
};

use crate::store::{
    ApplyRecord, ChangeKind, DefinitionRecord, MetadataStore, content_hash, read_u64,
};
use crate::{AliasEvent, Error, ModelRecord, ModelRegistry, ModelVersion, Result};

/// One write of the registry, as its log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// An apply of definitions.
    Apply {
        /// Its apply id.
        id: u64,
    },
    /// A model version registered.
    Version {
        /// Model.
        model: String,
        /// Version.
        version: u64,
    },
    /// An alias moved (or removed).
    Alias {
        /// Model.
        model: String,
        /// Alias.
        alias: String,
        /// The move's number in that alias's history.
        seq: u64,
    },
    /// A version's tags replaced.
    Tags {
        /// Model.
        model: String,
        /// Version.
        version: u64,
    },
    /// A model's rollout policy set or removed.
    Policy {
        /// Model.
        model: String,
    },
    /// The registry's canary routing key made (once, with the first local write).
    RoutingKey,
}

/// A change with the records a follower needs to repeat it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An apply: its record and every definition version it wrote.
    Apply {
        /// The apply log entry.
        record: ApplyRecord,
        /// The definitions added or changed, at their versions.
        definitions: Vec<DefinitionRecord>,
    },
    /// A model version: its signed manifest (the artifact travels apart, by digest).
    Version {
        /// The stored version (signed manifest, signature, tags).
        version: ModelVersion,
        /// When the model's first version was registered.
        model_created_at_ms: i64,
    },
    /// An alias move, as its history records it.
    Alias {
        /// The move.
        event: AliasEvent,
    },
    /// A version's tags, as they are now.
    Tags {
        /// Model.
        model: String,
        /// Version.
        version: u64,
        /// The tags.
        tags: std::collections::BTreeMap<String, String>,
    },
    /// A model's rollout policy, as it is now (`None`: removed).
    Policy {
        /// Model.
        model: String,
        /// The policy.
        policy: Option<crate::RolloutPolicy>,
    },
    /// The secret key of canary routing (32 bytes, hex), so every replica routes an
    /// entity to the same side without the routing being computable by a tenant.
    RoutingKey {
        /// The key.
        key: String,
    },
}

/// An event with its place in the primary's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced {
    /// The id of the registry that wrote it.
    pub registry: String,
    /// Its seq in that registry's log.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

impl Sequenced {
    /// The artifact this event needs (its SHA-256), if any.
    pub fn artifact(&self) -> Option<&str> {
        match &self.event {
            Event::Version { version, .. } => Some(&version.manifest.artifact_sha256),
            _ => None,
        }
    }
}

const HEAD: &[u8] = b"head";
const ID: &[u8] = b"id";
const PRIMARY: &[u8] = b"primary";
const CURSOR: &[u8] = b"cursor";
const ROUTING_KEY: &[u8] = b"routing_key";

/// The registry's canary routing key, once it has one.
pub(crate) fn routing_key(meta: &sled::Tree) -> Option<[u8; 32]> {
    meta.get(ROUTING_KEY)
        .ok()
        .flatten()
        .and_then(|b| <[u8; 32]>::try_from(b.as_ref()).ok())
}

/// Append `change` to the log inside a transaction over `changes` and `meta`
/// (`change_meta`); returns its seq.
pub(crate) fn log_tx(
    changes: &TransactionalTree,
    meta: &TransactionalTree,
    change: &Change,
) -> ConflictableTransactionResult<u64, Error> {
    let head = match meta.get(HEAD)? {
        Some(b) => read_u64("change_meta/head", &b).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let seq = head + 1;
    changes.insert(
        &seq.to_be_bytes(),
        serde_json::to_vec(change).expect("changes serialise"),
    )?;
    meta.insert(HEAD, &seq.to_be_bytes())?;
    Ok(seq)
}

/// [`log_tx`] for a write made here (not imported): refused in a registry that
/// follows another, whose records change only by [`Replication::import`], so a
/// follower can never diverge from its primary.
pub(crate) fn local_log_tx(
    changes: &TransactionalTree,
    meta: &TransactionalTree,
    change: &Change,
) -> ConflictableTransactionResult<u64, Error> {
    if let Some(primary) = meta.get(PRIMARY)? {
        return Err(ConflictableTransactionError::Abort(Error::Replication(
            format!(
                "this registry follows registry {}: it changes only by what it imports; make the change on the primary",
                String::from_utf8_lossy(&primary)
            ),
        )));
    }
    // The first local write of a primary makes its canary routing key: in the log
    // before anything that could need it, so followers import it first. (Never at
    // open: a registry about to follow another must start with no history.)
    if meta.get(ROUTING_KEY)?.is_none() {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
            |_| {
                ConflictableTransactionError::Abort(Error::Crypto(
                    "the system's random source failed".into(),
                ))
            },
        )?;
        meta.insert(ROUTING_KEY, &key)?;
        log_tx(changes, meta, &Change::RoutingKey)?;
    }
    log_tx(changes, meta, change)
}

/// Build the log of a registry written before it existed (see the module docs), and
/// give the registry its id. Runs when the store is opened; does nothing after once.
pub(crate) fn ensure_log(db: &sled::Db, path: &str) -> Result<()> {
    let storage = |source| Error::Storage {
        path: path.into(),
        source,
    };
    let meta = db.open_tree("change_meta").map_err(storage)?;
    if meta.get(HEAD).map_err(storage)?.is_some() {
        return Ok(());
    }
    let changes = db.open_tree("changes").map_err(storage)?;
    let mut log: Vec<Change> = Vec::new();
    for item in db.open_tree("applies").map_err(storage)?.iter() {
        let (k, _) = item.map_err(storage)?;
        log.push(Change::Apply {
            id: read_u64("applies", &k)?,
        });
    }
    for item in db.open_tree("model_versions").map_err(storage)?.iter() {
        let (k, _) = item.map_err(storage)?;
        let Some(split) = k.iter().position(|b| *b == 0) else {
            continue;
        };
        log.push(Change::Version {
            model: String::from_utf8_lossy(&k[..split]).into_owned(),
            version: read_u64("model_versions", &k[split + 1..])?,
        });
    }
    for item in db.open_tree("rollout_policies").map_err(storage)?.iter() {
        let (k, _) = item.map_err(storage)?;
        log.push(Change::Policy {
            model: String::from_utf8_lossy(&k).into_owned(),
        });
    }
    let mut moves: Vec<AliasEvent> = Vec::new();
    for item in db.open_tree("alias_log").map_err(storage)?.iter() {
        let (_, v) = item.map_err(storage)?;
        // Entries are JSON; the per-alias counters beside them are 8 bytes.
        if v.first() == Some(&b'{') {
            moves.push(serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                key: "alias_log".into(),
                reason: e.to_string(),
            })?);
        }
    }
    moves.sort_by_key(|e| (e.at_ms, e.seq));
    log.extend(moves.into_iter().map(|e| Change::Alias {
        model: e.model,
        alias: e.alias,
        seq: e.seq,
    }));
    let mut batch = sled::Batch::default();
    for (i, c) in log.iter().enumerate() {
        batch.insert(
            &(i as u64 + 1).to_be_bytes(),
            serde_json::to_vec(c).expect("changes serialise"),
        );
    }
    changes.apply_batch(batch).map_err(storage)?;
    if meta.get(ID).map_err(storage)?.is_none() {
        meta.insert(ID, new_id()?.as_bytes()).map_err(storage)?;
    }
    // The head last: a crash before it rebuilds the same entries on the next open.
    meta.insert(HEAD, &(log.len() as u64).to_be_bytes())
        .map_err(storage)?;
    db.flush().map_err(storage)?;
    Ok(())
}

fn new_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::Crypto("the system's random source failed".into()))?;
    Ok(hex::encode(bytes))
}

/// Where a follower stands: the registry it follows and the last seq it imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The followed registry's id (`None` before the first import).
    pub primary: Option<String>,
    /// Its last seq imported here (0: none).
    pub seq: u64,
}

/// The change log of one registry database: reading it (a primary) and replaying
/// another registry's log into it (a follower).
///
/// ```no_run
/// # fn run(store: &quiver_registry::MetadataStore, models: &quiver_registry::ModelRegistry,
/// #        primary: &quiver_registry::Replication) -> quiver_registry::Result<()> {
/// use quiver_registry::Replication;
/// let here = Replication::new(store, models)?;
/// for event in primary.events_after(here.cursor()?.seq, 64)? {
///     let artifact = match event.artifact() {
///         Some(digest) => Some(primary.artifact(digest)?),
///         None => None,
///     };
///     here.import(&event, artifact.as_deref())?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Replication {
    store: MetadataStore,
    models: ModelRegistry,
    changes: sled::Tree,
    meta: sled::Tree,
}

impl Replication {
    /// The log of the database `store` and `models` share.
    pub fn new(store: &MetadataStore, models: &ModelRegistry) -> Result<Self> {
        Ok(Self {
            changes: models.changes.clone(),
            meta: models.change_meta.clone(),
            store: store.clone(),
            models: models.clone(),
        })
    }

    fn storage(&self, source: sled::Error) -> Error {
        Error::Storage {
            path: self.models.path.clone(),
            source,
        }
    }

    /// This registry's id.
    pub fn id(&self) -> Result<String> {
        Ok(self
            .meta
            .get(ID)
            .map_err(|e| self.storage(e))?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default())
    }

    /// The last seq written to this registry's log (0: none).
    pub fn head(&self) -> Result<u64> {
        match self.meta.get(HEAD).map_err(|e| self.storage(e))? {
            Some(b) => read_u64("change_meta/head", &b),
            None => Ok(0),
        }
    }

    /// What this registry has imported from the registry it follows.
    pub fn cursor(&self) -> Result<Cursor> {
        let primary = self
            .meta
            .get(PRIMARY)
            .map_err(|e| self.storage(e))?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let seq = match self.meta.get(CURSOR).map_err(|e| self.storage(e))? {
            Some(b) => read_u64("change_meta/cursor", &b)?,
            None => 0,
        };
        Ok(Cursor { primary, seq })
    }

    /// A subscriber woken on every new log entry.
    pub fn watch(&self) -> sled::Subscriber {
        self.changes.watch_prefix(Vec::<u8>::new())
    }

    /// At most `max` events after seq `after`, oldest first, with their records.
    pub fn events_after(&self, after: u64, max: usize) -> Result<Vec<Sequenced>> {
        let registry = self.id()?;
        let start = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.changes.range(start..).take(max) {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let seq = read_u64("changes", &k)?;
            let change: Change = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                key: format!("change {seq}"),
                reason: e.to_string(),
            })?;
            out.push(Sequenced {
                registry: registry.clone(),
                seq,
                event: self.event(&change)?,
            });
        }
        Ok(out)
    }

    fn event(&self, change: &Change) -> Result<Event> {
        let missing = |what: String| Error::Corrupt {
            key: what,
            reason: "the change log names it but it is not stored".into(),
        };
        Ok(match change {
            Change::Apply { id } => {
                let record = self
                    .store
                    .apply_record(*id)?
                    .ok_or_else(|| missing(format!("apply {id}")))?;
                let mut definitions = Vec::new();
                for c in &record.changes {
                    if c.change != ChangeKind::Removed {
                        definitions.push(
                            self.store
                                .version(&c.kind, &c.name, c.version)?
                                .ok_or_else(|| {
                                    missing(format!("{}/{}@{}", c.kind, c.name, c.version))
                                })?,
                        );
                    }
                }
                Event::Apply {
                    record,
                    definitions,
                }
            }
            Change::Version { model, version } => {
                let mv = self
                    .models
                    .version(model, *version)?
                    .ok_or_else(|| missing(format!("{model}@{version}")))?;
                let created = self
                    .models
                    .model(model)?
                    .map(|m| m.created_at_ms)
                    .unwrap_or(mv.manifest.registered_at_ms);
                Event::Version {
                    version: mv,
                    model_created_at_ms: created,
                }
            }
            Change::Alias { model, alias, seq } => Event::Alias {
                event: self
                    .models
                    .alias_event(model, alias, *seq)?
                    .ok_or_else(|| missing(format!("alias {model}/{alias} move {seq}")))?,
            },
            Change::Policy { model } => Event::Policy {
                model: model.clone(),
                policy: self.models.policy(model)?,
            },
            Change::RoutingKey => Event::RoutingKey {
                key: hex::encode(
                    routing_key(&self.meta).ok_or_else(|| missing("the routing key".into()))?,
                ),
            },
            Change::Tags { model, version } => Event::Tags {
                model: model.clone(),
                version: *version,
                tags: self
                    .models
                    .version(model, *version)?
                    .ok_or_else(|| missing(format!("{model}@{version}")))?
                    .tags,
            },
        })
    }

    /// The bytes of artifact `digest` (checked against it).
    pub fn artifact(&self, digest: &str) -> Result<Vec<u8>> {
        self.models.artifacts.get(digest)
    }

    /// Replay `event` of the followed registry here: its records, this registry's own
    /// log entry and the cursor, in one transaction. `artifact` is the bytes of
    /// [`Sequenced::artifact`], for a model version. Fails without writing anything
    /// when the event is not the next one, comes from another registry, or does not
    /// check out (see the module docs).
    pub fn import(&self, ev: &Sequenced, artifact: Option<&[u8]>) -> Result<()> {
        let cursor = self.cursor()?;
        match &cursor.primary {
            Some(p) if p != &ev.registry => {
                return Err(Error::Replication(format!(
                    "this registry follows registry {p}, but the event comes from registry {}; a follower follows one registry for its whole life (start it on an empty folder)",
                    ev.registry
                )));
            }
            None if self.head()? > 0 => {
                return Err(Error::Replication(format!(
                    "this registry has its own history ({} changes); a follower starts from an empty registry",
                    self.head()?
                )));
            }
            _ => {}
        }
        if ev.seq != cursor.seq + 1 {
            return Err(Error::Replication(format!(
                "event {} arrived after event {}; a follower imports every event in order",
                ev.seq, cursor.seq
            )));
        }
        let mark = |meta: &TransactionalTree| -> ConflictableTransactionResult<(), Error> {
            meta.insert(PRIMARY, ev.registry.as_bytes())?;
            meta.insert(CURSOR, &ev.seq.to_be_bytes())?;
            Ok(())
        };
        let what = format!("event {} of registry {}", ev.seq, ev.registry);
        let result = match &ev.event {
            Event::Apply {
                record,
                definitions,
            } => {
                check_apply(record, definitions, &what)?;
                let s = &self.store;
                (
                    &s.defs,
                    &s.current,
                    &s.latest,
                    &s.applies,
                    &s.meta,
                    &self.changes,
                    &self.meta,
                )
                    .transaction(
                        |(defs, current, latest, applies, meta, changes, cmeta)| {
                            crate::store::import_apply_tx(
                                (defs, current, latest, applies, meta),
                                record,
                                definitions,
                            )?;
                            log_tx(changes, cmeta, &Change::Apply { id: record.id })?;
                            mark(cmeta)
                        },
                    )
            }
            Event::Version {
                version,
                model_created_at_ms,
            } => {
                let bytes = artifact.ok_or_else(|| {
                    Error::Replication(format!("{what}: the artifact of the version is missing"))
                })?;
                self.models.check_import(version, bytes)?;
                self.models.artifacts.put(bytes)?;
                let m = &self.models;
                let (model, number) = (&version.manifest.model, version.manifest.version);
                (
                    &m.models,
                    &m.versions,
                    &m.lineage.nodes,
                    &m.lineage.out,
                    &m.lineage.inn,
                    &self.changes,
                    &self.meta,
                )
                    .transaction(|(models, versions, tn, to, ti, changes, cmeta)| {
                        let abort = ConflictableTransactionError::Abort;
                        let latest = match models.get(model.as_bytes())? {
                            Some(b) => {
                                serde_json::from_slice::<ModelRecord>(&b)
                                    .map_err(|e| {
                                        abort(Error::Corrupt {
                                            key: format!("model {model}"),
                                            reason: e.to_string(),
                                        })
                                    })?
                                    .latest_version
                            }
                            None => 0,
                        };
                        if number != latest + 1 {
                            return Err(abort(Error::Replication(format!(
                                "{what}: version {number} of model `{model}` follows version {latest} here"
                            ))));
                        }
                        let record = ModelRecord {
                            name: model.clone(),
                            latest_version: number,
                            created_at_ms: *model_created_at_ms,
                        };
                        crate::models::write_version_tx(
                            (models, versions, tn, to, ti),
                            &record,
                            version,
                        )?;
                        log_tx(
                            changes,
                            cmeta,
                            &Change::Version {
                                model: model.clone(),
                                version: number,
                            },
                        )?;
                        mark(cmeta)
                    })
            }
            Event::Alias { event } => {
                let m = &self.models;
                (
                    &m.aliases,
                    &m.alias_log,
                    &m.versions,
                    &self.changes,
                    &self.meta,
                )
                    .transaction(|(aliases, log, versions, changes, cmeta)| {
                        crate::models::import_alias_tx((aliases, log, versions), event)?;
                        log_tx(
                            changes,
                            cmeta,
                            &Change::Alias {
                                model: event.model.clone(),
                                alias: event.alias.clone(),
                                seq: event.seq,
                            },
                        )?;
                        mark(cmeta)
                    })
            }
            Event::Tags {
                model,
                version,
                tags,
            } => {
                crate::models::check_tags(tags)?;
                let m = &self.models;
                (&m.versions, &self.changes, &self.meta).transaction(
                    |(versions, changes, cmeta)| {
                        crate::models::retag_tx(versions, model, *version, tags)?;
                        log_tx(
                            changes,
                            cmeta,
                            &Change::Tags {
                                model: model.clone(),
                                version: *version,
                            },
                        )?;
                        mark(cmeta)
                    },
                )
            }
            Event::RoutingKey { key } => {
                let key: [u8; 32] = hex::decode(key)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::Replication(format!(
                            "{what}: the routing key is not 32 bytes of hex"
                        ))
                    })?;
                (&self.changes, &self.meta).transaction(|(changes, cmeta)| {
                    cmeta.insert(ROUTING_KEY, &key)?;
                    log_tx(changes, cmeta, &Change::RoutingKey)?;
                    mark(cmeta)
                })
            }
            Event::Policy { model, policy } => {
                if let Some(p) = policy {
                    p.validate()?;
                }
                let m = &self.models;
                (&m.policies, &self.changes, &self.meta).transaction(
                    |(policies, changes, cmeta)| {
                        crate::models::write_policy_tx(policies, model, policy.as_ref())?;
                        log_tx(
                            changes,
                            cmeta,
                            &Change::Policy {
                                model: model.clone(),
                            },
                        )?;
                        mark(cmeta)
                    },
                )
            }
        };
        result.map_err(|e| crate::models::tx_err(&self.models.path, e))?;
        self.models.db.flush().map_err(|e| self.storage(e))?;
        Ok(())
    }
}

/// An apply event's records agree with each other and their hashes.
fn check_apply(record: &ApplyRecord, definitions: &[DefinitionRecord], what: &str) -> Result<()> {
    let bad = |m: String| Err(Error::Replication(format!("{what}: {m}")));
    let written: Vec<_> = record
        .changes
        .iter()
        .filter(|c| c.change != ChangeKind::Removed)
        .collect();
    if written.len() != definitions.len() {
        return bad(format!(
            "the apply wrote {} definitions but the event carries {}",
            written.len(),
            definitions.len()
        ));
    }
    for (c, d) in written.iter().zip(definitions) {
        if (c.kind.as_str(), c.name.as_str(), c.version)
            != (d.kind.as_str(), d.name.as_str(), d.version)
            || d.apply_id != record.id
        {
            return bad(format!(
                "definition {}/{}@{} does not match the apply's change {}/{}@{}",
                d.kind, d.name, d.version, c.kind, c.name, c.version
            ));
        }
        if content_hash(&d.definition) != d.hash {
            return bad(format!(
                "definition {}/{}@{} does not hash to its recorded hash",
                d.kind, d.name, d.version
            ));
        }
    }
    Ok(())
}
