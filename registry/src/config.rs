//! The one loader of the project's JSON config files (serving tokens and policies,
//! federation coordinator and worker configs): bounded in size, and an error names the
//! file and the path of the offending field (`roster[2].public_key`), not just a line
//! and column.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Read `path` (at most `max_bytes`) as JSON into `T`. The error is a sentence naming
/// the file and, where serde knows it, the field.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Cfg { port: u16 }
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("cfg.json");
/// std::fs::write(&path, r#"{"port": "eighty"}"#).unwrap();
/// let err = quiver_registry::read_json_config::<Cfg>(&path, 1 << 20).unwrap_err();
/// assert!(err.contains("cfg.json") && err.contains("field `port`"), "{err}");
/// ```
pub fn read_json_config<T: DeserializeOwned>(path: &Path, max_bytes: u64) -> Result<T, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > max_bytes {
        return Err(format!(
            "{} is {} bytes; this file is at most {max_bytes}",
            path.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_json_config(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse JSON into `T`; the error names the path of the offending field.
pub fn parse_json_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            e.into_inner().to_string()
        } else {
            format!("field `{field}`: {}", e.into_inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Bank {
        name: String,
        port: u16,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        roster: Vec<Bank>,
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = parse_json_config::<Cfg>(
            br#"{"roster": [{"name": "a", "port": 1}, {"name": "b", "port": -1}]}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("field `roster[1].port`"), "{e}");
        let e = parse_json_config::<Cfg>(br#"{"roster": [{"name": "a", "port": 1, "x": 2}]}"#)
            .unwrap_err();
        assert!(
            e.contains("roster[0]") && e.contains("unknown field `x`"),
            "{e}"
        );
        let e = parse_json_config::<Cfg>(b"{").unwrap_err();
        assert!(e.contains("EOF"), "{e}");
    }
}
