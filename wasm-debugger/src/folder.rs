//! The trace folder: `trace.json` (the [`Trace`] with each step's file names) and
//! `steps/NNN.arrow` / `steps/NNN-out.arrow` (Arrow IPC files, the step's rows and, for
//! UDF calls, the output). Format name and version are in `trace.json`
//! (`"format": "quiver-trace", "version": 1`); `docs/debugger.md` describes every field.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use quiver_featurestore::explain::{TRACE_FORMAT, TRACE_VERSION, Trace};

/// Largest `trace.json` read back.
pub const MAX_TRACE_JSON: u64 = 64 << 20;
/// Largest step file read back.
pub const MAX_STEP_FILE: u64 = 256 << 20;

/// Write `trace` into the folder `dir` (created; an existing trace there is replaced
/// whole: the new one is written beside it under a random name, the old one renamed
/// aside, the new one into place, then the old one removed; if the last rename fails
/// the old one is put back, so `dir` is never left with neither). Sets each step's
/// file names.
pub fn write(dir: &Path, trace: &mut Trace) -> anyhow::Result<()> {
    let files = trace.step_files()?;
    write_with_files(dir, trace, &files)
}

/// Write a trace whose step files come as `(name, bytes)` (from [`Trace::step_files`],
/// here or on a server's `explain` action): names are checked to be
/// `steps/NNN.arrow` or `steps/NNN-out.arrow`, the same guarantee either way.
pub fn write_with_files(
    dir: &Path,
    trace: &Trace,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir
        .file_name()
        .context("the trace folder needs a name")?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.partial-{}", random_hex()?));
    std::fs::create_dir_all(tmp.join("steps"))?;
    let written = (|| -> anyhow::Result<()> {
        for (rel, bytes) in files {
            let name = rel.strip_prefix("steps/").unwrap_or("");
            let ok = name.len() >= 9
                && name.ends_with(".arrow")
                && !name.contains("..")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                bail!("a step file is named `{rel}`; step files are steps/NNN.arrow");
            }
            std::fs::write(tmp.join(rel), bytes)?;
        }
        std::fs::write(tmp.join("trace.json"), serde_json::to_vec_pretty(trace)?)?;
        if dir.exists() && !dir.join("trace.json").exists() {
            bail!(
                "{} exists and is not a trace folder; choose another --out",
                dir.display()
            );
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let aside = parent.join(format!(".{name}.old-{}", random_hex()?));
    replace(dir, &tmp, &aside, |from, to| std::fs::rename(from, to))
}

fn random_hex() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(hex::encode(b))
}

/// Put the folder `new` at `dir`, moving an existing `dir` to `aside` first and
/// removing it only once `new` is in place; if that fails, `dir` is restored.
fn replace(
    dir: &Path,
    new: &Path,
    aside: &Path,
    rename: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let had_old = dir.exists();
    if had_old {
        if let Err(e) = rename(dir, aside) {
            let _ = std::fs::remove_dir_all(new);
            return Err(e).with_context(|| format!("moving the old trace {} aside", dir.display()));
        }
    }
    if let Err(e) = rename(new, dir) {
        if had_old {
            let _ = rename(aside, dir);
        }
        let _ = std::fs::remove_dir_all(new);
        return Err(e).with_context(|| format!("moving the trace to {}", dir.display()));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(aside);
    }
    Ok(())
}

/// A trace folder read back.
#[derive(Debug)]
pub struct TraceDir {
    /// The folder.
    pub dir: PathBuf,
    /// `trace.json`.
    pub trace: Trace,
}

/// Read the trace in `dir`, checking its format and version.
pub fn read(dir: &Path) -> anyhow::Result<TraceDir> {
    let path = dir.join("trace.json");
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{} is not a trace folder (no trace.json)", dir.display()))?;
    if meta.len() > MAX_TRACE_JSON {
        bail!(
            "{} is {} bytes, over {MAX_TRACE_JSON}",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read(&path)?;
    let head: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if head.get("format").and_then(|f| f.as_str()) != Some(TRACE_FORMAT) {
        bail!(
            "{} is not a quiver trace (no \"format\": \"{TRACE_FORMAT}\")",
            path.display()
        );
    }
    let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(TRACE_VERSION) {
        bail!(
            "{} is trace format version {version}; this quiver-debug reads version {TRACE_VERSION}",
            path.display()
        );
    }
    let mut trace: Trace = serde_json::from_value(head).with_context(|| {
        format!(
            "{} does not match trace format {TRACE_VERSION}",
            path.display()
        )
    })?;
    // Shown and copied from here on: rebuilt from the structured fields, every
    // argument quoted, whatever text the file held.
    trace.command = trace.reproduce();
    Ok(TraceDir {
        dir: dir.to_owned(),
        trace,
    })
}

impl TraceDir {
    /// The rows of a step file named in `trace.json` (relative, inside the folder).
    pub fn rows(&self, rel: &str) -> anyhow::Result<RecordBatch> {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!("step file `{rel}` is not a plain path inside the trace folder");
        }
        let path = self.dir.join(p);
        let meta =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.len() > MAX_STEP_FILE {
            bail!(
                "{} is {} bytes, over {MAX_STEP_FILE}",
                path.display(),
                meta.len()
            );
        }
        // A trace folder may come from anyone: the file is checked before arrow
        // decodes it (no compression, every size inside the file).
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (schema, batches) =
            quiver_featurestore::ipc::read_file(&bytes, &path.display().to_string())
                .map_err(anyhow::Error::msg)?;
        Ok(arrow::compute::concat_batches(&schema, &batches)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_replacement_leaves_the_old_trace_in_place() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("trace");
        let new = d.path().join(".trace.partial");
        let aside = d.path().join(".trace.old");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trace.json"), "old").unwrap();
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("trace.json"), "new").unwrap();
        // The second rename (new into place) fails, as on a full or read-only disk.
        let calls = std::cell::Cell::new(0);
        let e = replace(&dir, &new, &aside, |a, b| {
            calls.set(calls.get() + 1);
            if calls.get() == 2 {
                Err(std::io::Error::other("disk full"))
            } else {
                std::fs::rename(a, b)
            }
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("disk full"), "{e:#}");
        assert_eq!(
            std::fs::read_to_string(dir.join("trace.json")).unwrap(),
            "old"
        );
        assert!(!aside.exists() && !new.exists());
        // And when it works, the new one is in place and nothing is left beside it.
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("trace.json"), "new").unwrap();
        replace(&dir, &new, &aside, |a, b| std::fs::rename(a, b)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("trace.json")).unwrap(),
            "new"
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
