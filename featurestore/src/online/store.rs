//! [`OnlineStore`]: where materialized records live; [`SledOnlineStore`] keeps them in
//! sled on local disk.
//!
//! Layout:
//!
//! ```text
//! meta                 "wm/<view>"  -> Watermark (JSON): what is materialized, and where
//! data/<view>/<gen>    "i"                  -> index: first key of every page
//!                      "p" + u32 BE number  -> page: sorted records (see pages.rs)
//!                      "k" + entity key     -> overlay: a record written by an
//!                                              incremental run (empty = deleted)
//! ```
//!
//! A full run writes a new generation as pages (a few hundred records per sled value:
//! sled's cost is per insert, not per byte); incremental runs write the keys they
//! change to the overlay, which reads consult before the pages.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::pages::{self, Page};
use super::record::ServingPlan;
use crate::definition::FeatureField;
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
    /// How the generation's records are laid out; set by the store (0: a layout of an
    /// earlier release, which this one does not read).
    #[serde(default)]
    pub(crate) layout: u32,
}

/// The record layout this release writes and reads: pages plus an overlay.
pub(crate) const LAYOUT_PAGED: u32 = 1;

/// The bytes of one stored record, borrowed from the store's cache where it can
/// (sled) instead of copied: records of very active entities hold thousands of rows.
#[derive(Clone)]
pub struct RecordBytes(RecordBytesInner);

#[derive(Clone)]
enum RecordBytesInner {
    Sled(sled::IVec),
    /// A record inside a page.
    Slice(sled::IVec, std::ops::Range<usize>),
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
            RecordBytesInner::Slice(v, r) => &v[r.clone()],
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

    /// Replace all of the view's records by `records` (key, encoded record; keys unique)
    /// and set `watermark` (whose generation must be new), atomically for readers.
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

    /// Wait for background work (deletion of replaced generations) to finish. Stores
    /// without background work return at once.
    fn wait_background(&self) {}
}

/// The online store on sled.
pub struct SledOnlineStore {
    path: String,
    db: sled::Db,
    meta: sled::Tree,
    generations: RwLock<HashMap<String, Arc<Generation>>>,
    /// Background deletions of old generations, joined on drop so a short-lived
    /// process (the CLI) finishes them before it exits.
    gc: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for SledOnlineStore {
    fn drop(&mut self) {
        self.join_gc();
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

const INDEX_KEY: &[u8] = b"i";
const PAGE_PREFIX: u8 = b'p';
const OVERLAY_PREFIX: u8 = b'k';

fn page_key(n: usize) -> [u8; 5] {
    let mut k = [PAGE_PREFIX, 0, 0, 0, 0];
    k[1..].copy_from_slice(&(n as u32).to_be_bytes());
    k
}

fn overlay_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(OVERLAY_PREFIX);
    k.extend_from_slice(key);
    k
}

/// One generation's tree with its page index in memory.
struct Generation {
    tree: sled::Tree,
    index: pages::PageIndex,
    /// Whether the overlay may hold records (reads skip it while it is empty).
    overlay: AtomicBool,
}

fn check_layout(wm: &Watermark) -> Result<()> {
    if wm.layout == LAYOUT_PAGED {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "the online records of view {} were written by an earlier release in another layout; rebuild them with `quiver materialize --full --views {}`",
            wm.view, wm.view
        )))
    }
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
            generations: RwLock::new(HashMap::new()),
            gc: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn join_gc(&self) {
        let handles = std::mem::take(&mut *self.gc.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }

    fn generation(&self, name: &str) -> Result<Arc<Generation>> {
        if let Some(g) = self
            .generations
            .read()
            .expect("generation cache lock")
            .get(name)
        {
            return Ok(g.clone());
        }
        let tree = self
            .db
            .open_tree(name)
            .map_err(|e| storage(&self.path, e))?;
        let first_keys = match tree.get(INDEX_KEY).map_err(|e| storage(&self.path, e))? {
            Some(b) => pages::decode_index(&b)?,
            None => Vec::new(),
        };
        let overlay = tree
            .scan_prefix([OVERLAY_PREFIX])
            .next()
            .transpose()
            .map_err(|e| storage(&self.path, e))?
            .is_some();
        let g = Arc::new(Generation {
            tree,
            index: pages::PageIndex::new(first_keys),
            overlay: AtomicBool::new(overlay),
        });
        self.generations
            .write()
            .expect("generation cache lock")
            .insert(name.to_owned(), g.clone());
        Ok(g)
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
            if let Some(g) = name.strip_prefix(&prefix)
                && g.parse::<u64>().is_ok_and(|g| g < keep)
            {
                self.generations
                    .write()
                    .expect("generation cache lock")
                    .remove(&name);
                old.push(name);
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

/// The records of the pages, in key order.
struct PagedScan {
    pages: sled::Iter,
    page: Option<sled::IVec>,
    next: usize,
    path: String,
}

impl Iterator for PagedScan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(bytes) = &self.page {
                let page = match Page::parse(bytes) {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                };
                if self.next < page.len() {
                    let i = self.next;
                    self.next += 1;
                    return Some(
                        page.entry(i)
                            .map(|(k, v)| (bytes[k].to_vec(), bytes[v].to_vec())),
                    );
                }
            }
            match self.pages.next()? {
                Ok((_, v)) => {
                    self.page = Some(v);
                    self.next = 0;
                }
                Err(e) => return Some(Err(storage(&self.path, e))),
            }
        }
    }
}

/// Pages merged with the overlay: an overlay record replaces the page's, an empty one
/// deletes it.
struct Merge<A: Iterator, B: Iterator> {
    base: std::iter::Peekable<A>,
    overlay: std::iter::Peekable<B>,
}

type Item = Result<(Vec<u8>, Vec<u8>)>;

impl<A: Iterator<Item = Item>, B: Iterator<Item = Item>> Iterator for Merge<A, B> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            let take_overlay = match (self.base.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (_, Some(Err(_))) => return self.overlay.next(),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(Ok((a, _))), Some(Ok((b, _)))) => match b.cmp(a) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        self.base.next();
                        true
                    }
                },
            };
            let item = if take_overlay {
                self.overlay.next()
            } else {
                self.base.next()
            };
            match item {
                Some(Ok((_, v))) if take_overlay && v.is_empty() => continue,
                other => return other,
            }
        }
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
        check_layout(wm)?;
        let g = self.generation(&tree_name(&wm.view, wm.generation))?;
        let overlay = g.overlay.load(Ordering::Acquire);
        // Visiting keys in order reads each page once and walks neighbouring parts of
        // the tree one after another, so they are still in the CPU cache.
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        if keys.len() > 1 {
            order.sort_unstable_by(|&a, &b| pages::cmp_keys(&keys[a as usize], &keys[b as usize]));
        }
        let mut out: Vec<Option<RecordBytes>> = vec![None; keys.len()];
        let mut page: Option<(usize, sled::IVec)> = None;
        for i in order {
            let key = keys[i as usize].as_slice();
            if overlay
                && let Some(v) = g
                    .tree
                    .get(overlay_key(key))
                    .map_err(|e| storage(&self.path, e))?
            {
                if !v.is_empty() {
                    out[i as usize] = Some(RecordBytes(RecordBytesInner::Sled(v)));
                }
                continue;
            }
            let Some(n) = g.index.page_of(key) else {
                continue;
            };
            if page.as_ref().is_none_or(|(m, _)| *m != n) {
                let bytes = g
                    .tree
                    .get(page_key(n))
                    .map_err(|e| storage(&self.path, e))?
                    .ok_or_else(|| Error::Corrupt {
                        what: format!("online records of view {}", wm.view),
                        message: format!("page {n} of the index is missing"),
                    })?;
                page = Some((n, bytes));
            }
            let (_, bytes) = page.as_ref().expect("page set above");
            if let Some(r) = Page::parse(bytes)?.find(key)? {
                out[i as usize] = Some(RecordBytes(RecordBytesInner::Slice(bytes.clone(), r)));
            }
        }
        Ok(out)
    }

    fn commit(&self, wm: &Watermark, records: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        check_layout(wm)?;
        let g = self.generation(&tree_name(&wm.view, wm.generation))?;
        let tree = g.tree.clone();
        let wm_bytes = Self::wm_bytes(wm)?;
        let mut batch = sled::Batch::default();
        let writes = !records.is_empty();
        for (k, v) in records {
            // A deletion is an empty overlay record: the key may still be in a page.
            batch.insert(overlay_key(&k), v.unwrap_or_default());
        }
        if writes {
            // Set before the write: a reader that sees the flag and no record yet falls
            // through to the pages, which is what it would have read a moment earlier.
            g.overlay.store(true, Ordering::Release);
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

    fn replace(&self, wm: &Watermark, mut records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let wm = Watermark {
            layout: LAYOUT_PAGED,
            ..wm.clone()
        };
        let name = tree_name(&wm.view, wm.generation);
        // A leftover tree of this generation (a crash before the switch) is garbage.
        self.generations
            .write()
            .expect("generation cache lock")
            .remove(&name);
        self.db
            .drop_tree(&name)
            .map_err(|e| storage(&self.path, e))?;
        let tree = self
            .db
            .open_tree(&name)
            .map_err(|e| storage(&self.path, e))?;
        if !records.is_sorted_by(|a, b| a.0 < b.0) {
            records.sort_by(|a, b| a.0.cmp(&b.0));
            // Keys are unique by contract; keep the last of any repeat all the same.
            records.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    std::mem::swap(later, earlier);
                }
                same
            });
        }
        let t_ins = std::time::Instant::now();
        let built = pages::build(&records);
        drop(records);
        // Nobody reads this generation before the watermark switch below, so the
        // inserts need no batch atomicity.
        let mut first_keys = Vec::with_capacity(built.len());
        for (n, (first, page)) in built.into_iter().enumerate() {
            tree.insert(page_key(n), page)
                .map_err(|e| storage(&self.path, e))?;
            first_keys.push(first);
        }
        tree.insert(INDEX_KEY, pages::encode_index(&first_keys))
            .map_err(|e| storage(&self.path, e))?;
        tracing::debug!(phase = "inserts", pages = first_keys.len(), elapsed = ?t_ins.elapsed(), "materialization timing");
        let index = pages::PageIndex::new(first_keys);
        let t_flush = std::time::Instant::now();
        tree.flush().map_err(|e| storage(&self.path, e))?;
        tracing::debug!(phase = "flush", elapsed = ?t_flush.elapsed(), "materialization timing");
        self.generations
            .write()
            .expect("generation cache lock")
            .insert(
                name,
                Arc::new(Generation {
                    tree,
                    index,
                    overlay: AtomicBool::new(false),
                }),
            );
        // The switch: one write of the watermark.
        self.meta
            .insert(wm_key(&wm.view), Self::wm_bytes(&wm)?)
            .map_err(|e| storage(&self.path, e))?;
        self.db.flush().map_err(|e| storage(&self.path, e))?;
        self.drop_old_generations(&wm.view, wm.generation)?;
        Ok(())
    }

    fn scan(
        &self,
        wm: &Watermark,
    ) -> Result<Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + '_>> {
        check_layout(wm)?;
        let g = self.generation(&tree_name(&wm.view, wm.generation))?;
        let path = self.path.clone();
        let paged = PagedScan {
            pages: g.tree.scan_prefix([PAGE_PREFIX]),
            page: None,
            next: 0,
            path: path.clone(),
        };
        let overlay = g.tree.scan_prefix([OVERLAY_PREFIX]).map(move |item| {
            item.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                .map_err(|e| storage(&path, e))
        });
        Ok(Box::new(Merge {
            base: paged.peekable(),
            overlay: overlay.peekable(),
        }))
    }

    fn wait_background(&self) {
        self.join_gc();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::record::ServingKind;

    fn wm(generation: u64) -> Watermark {
        Watermark {
            view: "v".into(),
            view_version: 1,
            view_hash: "h".into(),
            generation,
            tables: Vec::new(),
            until_us: 0,
            materialized_at: String::new(),
            keys: 0,
            rows_read: 0,
            key_fields: Vec::new(),
            features: Vec::new(),
            fallback: None,
            plan: ServingPlan {
                kind: ServingKind::AsOf,
                inputs: Vec::new(),
                ttl_us: None,
            },
            layout: LAYOUT_PAGED,
        }
    }

    fn key(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn pages_and_overlay_read_and_scan_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledOnlineStore::open(dir.path()).unwrap();
        // Unsorted input, many pages.
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..5_000u32)
            .rev()
            .map(|i| (key(i * 2), vec![i as u8; 40]))
            .collect();
        store.replace(&wm(1), records).unwrap();
        let current = store.watermark("v").unwrap().unwrap();
        assert_eq!(current.layout, LAYOUT_PAGED);
        let got = store
            .get(&current, &[key(10), key(11), key(9_998), key(0)])
            .unwrap();
        assert_eq!(got[0].as_deref(), Some(&[5u8; 40][..]));
        assert!(got[1].is_none());
        assert_eq!(got[2].as_deref(), Some(&[(4_999u32 as u8); 40][..]));
        assert_eq!(got[3].as_deref(), Some(&[0u8; 40][..]));

        // Overlay: update one, add one, delete one.
        store
            .commit(
                &current,
                vec![
                    (key(10), Some(b"new".to_vec())),
                    (key(11), Some(b"added".to_vec())),
                    (key(0), None),
                ],
            )
            .unwrap();
        let got = store
            .get(&current, &[key(0), key(10), key(11), key(12)])
            .unwrap();
        assert!(got[0].is_none());
        assert_eq!(got[1].as_deref(), Some(&b"new"[..]));
        assert_eq!(got[2].as_deref(), Some(&b"added"[..]));
        assert_eq!(got[3].as_deref(), Some(&[6u8; 40][..]));

        let scanned: Vec<(Vec<u8>, Vec<u8>)> =
            store.scan(&current).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(scanned.len(), 5_000);
        assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(scanned[0].0, key(2));
        assert_eq!(scanned[4], (key(10), b"new".to_vec()));
        assert_eq!(scanned[5], (key(11), b"added".to_vec()));

        // Reopened, the index and the overlay flag come back from disk.
        drop(store);
        let store = SledOnlineStore::open(dir.path()).unwrap();
        let got = store.get(&current, &[key(11), key(0), key(20)]).unwrap();
        assert_eq!(got[0].as_deref(), Some(&b"added"[..]));
        assert!(got[1].is_none());
        assert_eq!(got[2].as_deref(), Some(&[10u8; 40][..]));
    }

    #[test]
    fn records_of_an_earlier_layout_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledOnlineStore::open(dir.path()).unwrap();
        let old = Watermark { layout: 0, ..wm(1) };
        let e = store.get(&old, &[key(1)]).unwrap_err().to_string();
        assert!(e.contains("quiver materialize --full"), "{e}");
    }
}
