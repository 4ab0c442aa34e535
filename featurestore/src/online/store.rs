//! [`OnlineStore`]: where materialized records live; [`SledOnlineStore`] keeps them in
//! sled on local disk.
//!
//! Layout:
//!
//! ```text
//! meta                 "wm/<view>"  -> Watermark (JSON): what is materialized, and where
//! data/<view>/<gen>    entity key   -> record (see record.rs)
//! ```
//!
//! # Guarantees
//! - [`OnlineStore::commit`] writes records and the new watermark in one transaction
//!   over the data tree and the meta tree.
//! - [`OnlineStore::replace`] fills a new generation tree first, then switches the
//!   watermark to it in one transaction; a crash before the switch leaves the old
//!   generation serving and an orphan tree that the next replace deletes.
//! - Either way a reader sees the old watermark with the old records, or the new
//!   watermark with the new records, never a mix.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::record::ServingPlan;
use crate::catalog::FeatureField;
use crate::{Error, Result};

/// A Delta table at the version materialization read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMark {
    /// Source name.
    pub source: String,
    /// Table location as the repo writes it.
    pub location: String,
    /// Delta version read.
    pub version: i64,
}

/// What is materialized for one view: the state a run left behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    /// The view.
    pub view: String,
    /// The applied version materialized.
    pub view_version: u64,
    /// Its content hash.
    pub view_hash: String,
    /// Data generation (changes on full rebuilds).
    pub generation: u64,
    /// Source tables at the versions read. Invariant: the store holds exactly the rows
    /// of these versions with event time `<= until_us`.
    pub tables: Vec<TableMark>,
    /// Event-time bound of what is materialized (UTC microseconds).
    pub until_us: i64,
    /// When the run committed (RFC 3339).
    pub materialized_at: String,
    /// Entity keys stored.
    pub keys: u64,
    /// Source rows the run read.
    pub rows_read: u64,
    /// Join key columns and their types.
    pub key_fields: Vec<FeatureField>,
    /// Served features and their types.
    pub features: Vec<FeatureField>,
    /// Values served with status FALLBACK for unknown keys (numeric features; others null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Vec<Option<f64>>>,
    pub(crate) plan: ServingPlan,
}

/// The bytes of one stored record, borrowed from the store's cache where it can
/// (sled) instead of copied: records of very active entities hold thousands of rows.
#[derive(Clone)]
pub struct RecordBytes(RecordBytesInner);

#[derive(Clone)]
enum RecordBytesInner {
    Sled(sled::IVec),
    Owned(Vec<u8>),
}

impl From<Vec<u8>> for RecordBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(RecordBytesInner::Owned(v))
    }
}

impl std::ops::Deref for RecordBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            RecordBytesInner::Sled(v) => v,
            RecordBytesInner::Owned(v) => v,
        }
    }
}

impl fmt::Debug for RecordBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordBytes({} bytes)", self.len())
    }
}

/// Storage of materialized records. Object-safe: used as `Arc<dyn OnlineStore>`.
pub trait OnlineStore: Send + Sync + fmt::Debug {
    /// The view's watermark, if it was ever materialized.
    fn watermark(&self, view: &str) -> Result<Option<Watermark>>;

    /// Records of the watermark's generation for `keys`, in order (`None` if absent).
    fn get(&self, watermark: &Watermark, keys: &[Vec<u8>]) -> Result<Vec<Option<RecordBytes>>>;

    /// Upsert (`Some`) or delete (`None`) records of the current generation and set the
    /// new watermark, atomically.
    fn commit(&self, watermark: &Watermark, records: Vec<(Vec<u8>, Option<Vec<u8>>)>)
    -> Result<()>;

    /// Replace all of the view's records by `records` (key, encoded record) and set
    /// `watermark` (whose generation must be new), atomically for readers.
    fn replace(&self, watermark: &Watermark, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>;

    /// Every record of the watermark's generation. Stores that cannot enumerate say so.
    fn scan(
        &self,
        _watermark: &Watermark,
    ) -> Result<Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + '_>> {
        Err(Error::InvalidRequest(
            "this online store cannot enumerate its records".into(),
        ))
    }

    /// Names of materialized views.
    fn views(&self) -> Result<Vec<String>>;
}

/// The online store on sled.
pub struct SledOnlineStore {
    path: String,
    db: sled::Db,
    meta: sled::Tree,
    trees: RwLock<HashMap<String, sled::Tree>>,
    /// Background deletions of old generations, joined on drop so a short-lived
    /// process (the CLI) finishes them before it exits.
    gc: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for SledOnlineStore {
    fn drop(&mut self) {
        let handles = std::mem::take(&mut *self.gc.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

impl fmt::Debug for SledOnlineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SledOnlineStore({})", self.path)
    }
}

fn wm_key(view: &str) -> String {
    format!("wm/{view}")
}

fn tree_name(view: &str, generation: u64) -> String {
    format!("data/{view}/{generation}")
}

impl SledOnlineStore {
    /// Open (or create) the store in folder `path`. Fails with a clear message when
    /// another process (a running `quiver serve`) holds it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let shown = path.as_ref().display().to_string();
        // Every commit flushes explicitly (values and watermark are durable when it
        // returns), so sled's periodic background flush only adds latency spikes to reads.
        let db = sled::Config::new()
            .path(path.as_ref())
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            // Records of very active entities reach tens of KiB; with 8 MiB log segments
            // they stay in the log instead of becoming separate blob files.
            .segment_size(8 << 20)
            .open()
            .map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                Error::InvalidRequest(format!("the online store {shown} is in use by another process (a running `quiver serve`?); send the request to that server instead"))
            }
            other => Error::Io { path: shown.clone(), source: std::io::Error::other(other.to_string()) },
        })?;
        let meta = db.open_tree("meta").map_err(|e| storage(&shown, e))?;
        Ok(Self {
            path: shown,
            db,
            meta,
            trees: RwLock::new(HashMap::new()),
            gc: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree> {
        if let Some(t) = self.trees.read().expect("tree cache lock").get(name) {
            return Ok(t.clone());
        }
        let t = self
            .db
            .open_tree(name)
            .map_err(|e| storage(&self.path, e))?;
        self.trees
            .write()
            .expect("tree cache lock")
            .insert(name.to_owned(), t.clone());
        Ok(t)
    }

    fn wm_bytes(wm: &Watermark) -> Result<Vec<u8>> {
        serde_json::to_vec(wm).map_err(|e| Error::Corrupt {
            what: format!("watermark of {}", wm.view),
            message: e.to_string(),
        })
    }

    /// Delete data trees of `view` older than `keep`. Readers switched to `keep` with
    /// the watermark write, so nothing reads them any more: the (slow, proportional to
    /// their size) deletion runs on a background thread and a run does not wait for it.
    /// Newer generations are never touched, so a later run cannot lose its tree; a
    /// deletion cut short by a crash is finished by the next full run.
    fn drop_old_generations(&self, view: &str, keep: u64) -> Result<()> {
        let prefix = format!("data/{view}/");
        let mut old = Vec::new();
        for name in self.db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if let Some(g) = name.strip_prefix(&prefix) {
                if g.parse::<u64>().is_ok_and(|g| g < keep) {
                    self.trees.write().expect("tree cache lock").remove(&name);
                    old.push(name);
                }
            }
        }
        if old.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let path = self.path.clone();
        let handle = std::thread::Builder::new()
            .name("online-gc".into())
            .spawn(move || {
                for name in old {
                    if let Err(e) = db.drop_tree(&name) {
                        tracing::warn!(store = %path, tree = %name, error = %e, "could not drop an old generation; the next full run retries");
                    }
                }
            })
            .map_err(|e| Error::io(&self.path, e))?;
        let mut gc = self.gc.lock().unwrap_or_else(|e| e.into_inner());
        gc.retain(|h| !h.is_finished());
        gc.push(handle);
        Ok(())
    }
}

fn storage(path: &str, e: sled::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl OnlineStore for SledOnlineStore {
    fn watermark(&self, view: &str) -> Result<Option<Watermark>> {
        match self
            .meta
            .get(wm_key(view))
            .map_err(|e| storage(&self.path, e))?
        {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: format!("watermark of {view}"),
                    message: e.to_string(),
                }),
        }
    }

    fn get(&self, wm: &Watermark, keys: &[Vec<u8>]) -> Result<Vec<Option<RecordBytes>>> {
        let tree = self.tree(&tree_name(&wm.view, wm.generation))?;
        keys.iter()
            .map(|k| {
                tree.get(k)
                    .map(|v| v.map(|v| RecordBytes(RecordBytesInner::Sled(v))))
                    .map_err(|e| storage(&self.path, e))
            })
            .collect()
    }

    fn commit(&self, wm: &Watermark, records: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        let tree = self.tree(&tree_name(&wm.view, wm.generation))?;
        let wm_bytes = Self::wm_bytes(wm)?;
        let mut batch = sled::Batch::default();
        for (k, v) in records {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        let key = wm_key(&wm.view);
        let result: Result<(), TransactionError<()>> = (&tree, &self.meta).transaction(|(t, m)| {
            t.apply_batch(&batch)?;
            m.insert(key.as_bytes(), wm_bytes.as_slice())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        result.map_err(|e| match e {
            TransactionError::Storage(e) => storage(&self.path, e),
            TransactionError::Abort(()) => Error::InvalidRequest("online commit aborted".into()),
        })?;
        self.db.flush().map_err(|e| storage(&self.path, e))?;
        Ok(())
    }

    fn replace(&self, wm: &Watermark, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let name = tree_name(&wm.view, wm.generation);
        // A leftover tree of this generation (a crash before the switch) is garbage.
        self.trees.write().expect("tree cache lock").remove(&name);
        self.db
            .drop_tree(&name)
            .map_err(|e| storage(&self.path, e))?;
        let tree = self.tree(&name)?;
        // Nobody reads this generation before the watermark switch below, so the
        // inserts need no batch atomicity: plain inserts, split across threads, are far
        // faster than one large sled batch.
        let t_ins = std::time::Instant::now();
        let threads = super::worker_threads();
        let chunk = records.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = records
                .chunks(chunk)
                .map(|part| {
                    let tree = tree.clone();
                    scope.spawn(move || {
                        for (k, v) in part {
                            tree.insert(k.as_slice(), v.as_slice())?;
                        }
                        Ok::<_, sled::Error>(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .expect("insert thread panicked")
                    .map_err(|e| storage(&self.path, e))?;
            }
            Ok::<_, Error>(())
        })?;
        tracing::debug!(phase = "inserts", elapsed = ?t_ins.elapsed(), "materialization timing");
        let t_flush = std::time::Instant::now();
        tree.flush().map_err(|e| storage(&self.path, e))?;
        tracing::debug!(phase = "flush", elapsed = ?t_flush.elapsed(), "materialization timing");
        // The switch: one write of the watermark.
        self.meta
            .insert(wm_key(&wm.view), Self::wm_bytes(wm)?)
            .map_err(|e| storage(&self.path, e))?;
        self.db.flush().map_err(|e| storage(&self.path, e))?;
        self.drop_old_generations(&wm.view, wm.generation)?;
        Ok(())
    }

    fn scan(
        &self,
        wm: &Watermark,
    ) -> Result<Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + '_>> {
        let tree = self.tree(&tree_name(&wm.view, wm.generation))?;
        let path = self.path.clone();
        Ok(Box::new(tree.iter().map(move |item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| storage(&path, e))
        })))
    }

    fn views(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix("wm/") {
            let (k, _) = item.map_err(|e| storage(&self.path, e))?;
            out.push(String::from_utf8_lossy(&k[3..]).into_owned());
        }
        Ok(out)
    }
}
