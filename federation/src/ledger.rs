//! A bank's persisted privacy ledger: what every run has spent on each dataset, so the
//! bank's budget bounds the total ε across runs and restarts, not one run's.
//!
//! The ledger is one JSON file at the bank (never sent anywhere), holding per dataset
//! the Rényi-DP curves of record-level DP-SGD and of bank-level noise, and one line per
//! round spent. A worker opens it with an exclusive lock (a second worker on the same
//! ledger is refused), checks each round against it before training, and writes the
//! spend (temp file, fsync, rename, fsync of the folder) **before** its update leaves
//! the bank: a crash after the write overstates what was spent, never understates it.
//! A ledger that does not parse is an error, never a fresh start.
//!
//! ```
//! use quiver_federation::ledger::PrivacyLedger;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("ledger.json");
//! let mut ledger = PrivacyLedger::open(&path).unwrap();
//! let mut spent = ledger.dataset("transactions");
//! spent.record.compose_subsampled_gaussian(0.01, 1.0, 100).unwrap();
//! ledger.commit("transactions", spent, "session-1", 1).unwrap();
//! drop(ledger);
//! let again = PrivacyLedger::open(&path).unwrap();
//! assert!(again.dataset("transactions").record_epsilon(1e-5).unwrap() > 0.0);
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fs2::FileExt;
use serde::{Deserialize, Serialize};

use crate::dp::{DpError, RdpAccountant};

use crate::limits::MAX_LEDGER_BYTES;
use crate::limits::MAX_ROUNDS_KEPT;

/// Why the ledger cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Reading, writing or locking the file failed.
    #[error("privacy ledger {path}: {source}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds it.
    #[error(
        "privacy ledger {0} is in use by another worker; one worker per ledger (the budget would be spent twice)"
    )]
    Locked(PathBuf),
    /// The file is not a ledger this version can read.
    #[error("privacy ledger {path} is unreadable ({reason}); refusing to start from ε = 0")]
    Corrupt {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Accounting failed.
    #[error(transparent)]
    Dp(#[from] DpError),
}

/// What one dataset has spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpend {
    /// Record-level DP-SGD, composed over every round of every run.
    pub record: RdpAccountant,
    /// Bank-level (Skellam) noise, composed likewise.
    pub bank: RdpAccountant,
    /// One line per round spent, oldest first (the most recent 10,000).
    #[serde(default)]
    pub rounds: Vec<SpentRound>,
}

impl Default for DatasetSpend {
    fn default() -> Self {
        Self {
            record: RdpAccountant::new(),
            bank: RdpAccountant::for_skellam(),
            rounds: Vec::new(),
        }
    }
}

impl DatasetSpend {
    /// Record-level ε at `delta` over everything spent.
    pub fn record_epsilon(&self, delta: f64) -> Result<f64, DpError> {
        Ok(self.record.epsilon(delta)?.0)
    }

    /// Bank-level ε at `delta` over everything spent.
    pub fn bank_epsilon(&self, delta: f64) -> Result<f64, DpError> {
        Ok(self.bank.epsilon(delta)?.0)
    }
}

/// One round's spend, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpentRound {
    /// Unix seconds when it was written.
    pub at: u64,
    /// Federation session (run) id.
    pub session: String,
    /// Round of that run.
    pub round: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    version: u32,
    datasets: BTreeMap<String, DatasetSpend>,
}

const VERSION: u32 = 1;

/// An open, locked ledger.
#[derive(Debug)]
pub struct PrivacyLedger {
    path: PathBuf,
    state: LedgerFile,
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl PrivacyLedger {
    /// Open (or create) the ledger at `path` and lock it for this process.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock_exclusive().is_err() {
            return Err(LedgerError::Locked(path.to_path_buf()));
        }
        let state = Self::read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            state,
            _lock: lock,
        })
    }

    /// Read a ledger without locking it (for `quiver-fed ledger`; changes nothing).
    pub fn read_only(path: &Path) -> Result<BTreeMap<String, DatasetSpend>, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        Ok(Self::read(path)?.datasets)
    }

    fn read(path: &Path) -> Result<LedgerFile, LedgerError> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LedgerFile {
                    version: VERSION,
                    datasets: BTreeMap::new(),
                });
            }
            Err(e) => return Err(io(path)(e)),
        };
        let corrupt = |reason: String| LedgerError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if meta.len() > MAX_LEDGER_BYTES {
            return Err(corrupt(format!(
                "{} bytes; at most {MAX_LEDGER_BYTES}",
                meta.len()
            )));
        }
        let bytes = fs::read(path).map_err(io(path))?;
        let state: LedgerFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.version != VERSION {
            return Err(corrupt(format!(
                "version {}; this build reads {VERSION}",
                state.version
            )));
        }
        Ok(state)
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `dataset` has spent so far (nothing, for a new one).
    pub fn dataset(&self, dataset: &str) -> DatasetSpend {
        self.state
            .datasets
            .get(dataset)
            .cloned()
            .unwrap_or_default()
    }

    /// Every dataset's spend.
    pub fn datasets(&self) -> &BTreeMap<String, DatasetSpend> {
        &self.state.datasets
    }

    /// Record `spend` as `dataset`'s new total, with a line for `(session, round)`, and
    /// make it durable before returning.
    pub fn commit(
        &mut self,
        dataset: &str,
        mut spend: DatasetSpend,
        session: &str,
        round: u64,
    ) -> Result<(), LedgerError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        spend.rounds.push(SpentRound {
            at,
            session: session.to_string(),
            round,
        });
        if spend.rounds.len() > MAX_ROUNDS_KEPT {
            let cut = spend.rounds.len() - MAX_ROUNDS_KEPT;
            spend.rounds.drain(..cut);
        }
        let mut next = self.state.clone();
        next.datasets.insert(dataset.to_string(), spend);
        let bytes = serde_json::to_vec_pretty(&next).expect("a ledger serializes");
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.state = next;
        Ok(())
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_and_a_corrupt_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.json");
        let mut first = PrivacyLedger::open(&path).unwrap();
        assert!(matches!(
            PrivacyLedger::open(&path),
            Err(LedgerError::Locked(_))
        ));
        let mut spend = first.dataset("d");
        spend
            .record
            .compose_subsampled_gaussian(0.1, 1.0, 10)
            .unwrap();
        first.commit("d", spend.clone(), "s", 1).unwrap();
        drop(first);
        let again = PrivacyLedger::open(&path).unwrap();
        assert_eq!(again.dataset("d").record, spend.record);
        assert_eq!(again.dataset("other").record_epsilon(1e-5).unwrap(), 0.0);
        drop(again);
        std::fs::write(&path, b"{\"version\": 1, \"datasets\": ").unwrap();
        let e = PrivacyLedger::open(&path).unwrap_err();
        assert!(matches!(e, LedgerError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("refusing to start from"), "{e}");
    }
}
