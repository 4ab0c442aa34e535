//! Reading a feature repo folder: files, documents, definitions, references.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::decode::{Decoder, Definition};
use super::yaml::{Loc, parse_documents};
use super::{
    Diagnostic, Diagnostics, FeatureRepo, FeatureView, Origin, RESERVED_COLUMNS, Spanned, suggest,
};
use crate::limits::Limits;

fn whole_file(file: &Path, message: impl Into<String>) -> Diagnostic {
    Diagnostic::new(file, Loc::default(), message)
}

/// Collect `.yaml`/`.yml` files under `root`, sorted, skipping hidden folders and
/// symbolic links to folders.
fn yaml_files(root: &Path, limits: &Limits, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                diags.push(whole_file(
                    dir.strip_prefix(root).unwrap_or(&dir),
                    format!("cannot read folder: {e}"),
                ));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" || name == "_delta_log" {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
                && (meta.is_file() || path.is_file())
            {
                out.push(path);
                if out.len() > limits.max_files {
                    diags.push(whole_file(
                        Path::new("."),
                        format!("more than {} YAML files in the repo", limits.max_files),
                    ));
                    return Vec::new();
                }
            }
        }
    }
    out.sort();
    out
}

/// Read one file within the size bound.
fn read_bounded(path: &Path, rel: &Path, limits: &Limits) -> Result<String, Diagnostic> {
    let file =
        std::fs::File::open(path).map_err(|e| whole_file(rel, format!("cannot open: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limits.max_file_bytes {
        return Err(whole_file(
            rel,
            format!(
                "file is {len} bytes, over the limit of {} bytes",
                limits.max_file_bytes
            ),
        )
        .with_hint("split the definitions over several smaller files"));
    }
    let mut bytes = Vec::new();
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| whole_file(rel, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(whole_file(
            rel,
            format!(
                "file grew past the limit of {} bytes while being read",
                limits.max_file_bytes
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        whole_file(
            rel,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parse the definitions of one file's text. `rel` names the file in errors.
pub(crate) fn parse_file(
    rel: &Path,
    text: &str,
    limits: &Limits,
) -> Result<Vec<Definition>, Diagnostics> {
    let docs = parse_documents(text, limits).map_err(|e| {
        Diagnostics(vec![
            Diagnostic::new(rel, e.loc, e.message).with_hint_opt(e.hint),
        ])
    })?;
    let mut decoder = Decoder::new(rel, limits);
    let defs: Vec<Definition> = docs.iter().filter_map(|d| decoder.document(d)).collect();
    if decoder.diags.is_empty() {
        Ok(defs)
    } else {
        Err(Diagnostics(decoder.diags))
    }
}

/// Read and check the repo in `root`: every YAML file, every document, names and
/// references between definitions. Touches no data; see
/// [`crate::FeatureStore::validate`] for checks against the Delta tables.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("defs.yaml"), "kind: Entity\nname: user\njoin_keys: [user_id]\n")?;
/// let repo = quiver_featurestore::spec::load_repo(dir.path(), &Default::default())?;
/// assert!(repo.entities.contains_key("user"));
///
/// std::fs::write(dir.path().join("bad.yaml"), "kind: Entiy\nname: x\n")?;
/// let err = quiver_featurestore::spec::load_repo(dir.path(), &Default::default()).unwrap_err();
/// assert!(err.to_string().contains("bad.yaml:1:7: unknown kind `Entiy`"));
/// assert!(err.to_string().contains("did you mean `Entity`?"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load_repo(root: &Path, limits: &Limits) -> Result<FeatureRepo, Diagnostics> {
    let mut diags = Diagnostics::default();
    if !root.is_dir() {
        diags.push(
            whole_file(root, "feature repo folder not found")
                .with_hint("pass --repo DIR, or run `quiver init` to create one"),
        );
        return Err(diags);
    }
    let files = yaml_files(root, limits, &mut diags);
    let mut total = 0u64;
    let mut defs = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(root).unwrap_or(path).to_path_buf();
        let text = match read_bounded(path, &rel, limits) {
            Ok(t) => t,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        total += text.len() as u64;
        if total > limits.max_repo_bytes {
            diags.push(whole_file(
                &rel,
                format!(
                    "the repo's YAML passes {} bytes in all",
                    limits.max_repo_bytes
                ),
            ));
            break;
        }
        match parse_file(&rel, &text, limits) {
            Ok(d) => defs.extend(d),
            Err(e) => diags.0.extend(e.0),
        }
    }
    if defs.len() > limits.max_definitions {
        diags.push(whole_file(
            Path::new("."),
            format!(
                "{} definitions, over the limit of {}",
                defs.len(),
                limits.max_definitions
            ),
        ));
    }
    let mut repo = FeatureRepo {
        root: root.to_path_buf(),
        ..Default::default()
    };
    fn insert<T>(
        map: &mut BTreeMap<String, T>,
        name: &Spanned<String>,
        origin: &Origin,
        item: T,
        kind: &str,
        origin_of: impl Fn(&T) -> &Origin,
        diags: &mut Diagnostics,
    ) {
        if let Some(prev) = map.get(&name.value) {
            let p = origin_of(prev);
            diags.push(
                Diagnostic::new(
                    &origin.file,
                    name.loc,
                    format!("{kind} `{}` is defined twice", name.value),
                )
                .with_hint(format!(
                    "the first is at {}:{}; rename or remove one",
                    p.file.display(),
                    p.loc.line
                )),
            );
        } else {
            map.insert(name.value.clone(), item);
        }
    }
    for def in defs {
        match def {
            Definition::Entity(e) => {
                let (n, o) = (e.name.clone(), e.origin.clone());
                insert(
                    &mut repo.entities,
                    &n,
                    &o,
                    e,
                    "entity",
                    |x| &x.origin,
                    &mut diags,
                );
            }
            Definition::Source(s) => {
                let (n, o) = (s.name.clone(), s.origin.clone());
                insert(
                    &mut repo.sources,
                    &n,
                    &o,
                    s,
                    "source",
                    |x| &x.origin,
                    &mut diags,
                );
            }
            Definition::View(v) => {
                let (n, o) = (v.name.clone(), v.origin.clone());
                insert(
                    &mut repo.views,
                    &n,
                    &o,
                    v,
                    "feature view",
                    |x| &x.origin,
                    &mut diags,
                );
            }
        }
    }
    for view in repo.views.values() {
        check_references(&repo, view, &mut diags);
    }
    if diags.is_empty() {
        Ok(repo)
    } else {
        diags.sort();
        Err(diags)
    }
}

fn check_references(repo: &FeatureRepo, view: &FeatureView, diags: &mut Diagnostics) {
    let file = &view.origin.file;
    let entity = repo.entities.get(&view.entity.value);
    if entity.is_none() {
        let names: Vec<&str> = repo.entities.keys().map(String::as_str).collect();
        diags.push(
            Diagnostic::new(
                file,
                view.entity.loc,
                format!(
                    "view `{}` uses entity `{}`, which is not defined",
                    view.name, view.entity
                ),
            )
            .with_hint(suggest(&view.entity.value, &names)),
        );
    }
    for s in &view.sources {
        if !repo.sources.contains_key(&s.value) {
            let names: Vec<&str> = repo.sources.keys().map(String::as_str).collect();
            diags.push(
                Diagnostic::new(
                    file,
                    s.loc,
                    format!(
                        "view `{}` reads source `{}`, which is not defined",
                        view.name, s
                    ),
                )
                .with_hint(suggest(&s.value, &names)),
            );
        }
    }
    for (i, s) in view.sources.iter().enumerate() {
        if view.sources[..i].iter().any(|p| p.value == s.value) {
            diags.push(Diagnostic::new(
                file,
                s.loc,
                format!("source `{s}` is listed twice"),
            ));
        }
    }
    let keys: Vec<&str> = entity
        .map(|e| e.join_keys.iter().map(|k| k.value.as_str()).collect())
        .unwrap_or_default();
    let features: Vec<(&str, Loc)> = match &view.body {
        super::ViewBody::Columns(c) => c
            .iter()
            .map(|f| (f.name.value.as_str(), f.name.loc))
            .collect(),
        super::ViewBody::Aggregates(a) => a
            .iter()
            .map(|f| (f.name.value.as_str(), f.name.loc))
            .collect(),
        super::ViewBody::Sql(s) => s
            .features
            .iter()
            .flatten()
            .map(|f| (f.value.as_str(), f.loc))
            .collect(),
    };
    for (name, loc) in features {
        if keys.contains(&name) || RESERVED_COLUMNS.contains(&name) {
            diags.push(
                Diagnostic::new(
                    file,
                    loc,
                    format!(
                        "feature name `{name}` is taken by a join key or a column every result has"
                    ),
                )
                .with_hint(format!("rename the feature, for example `{}_value`", name)),
            );
        }
        if name.ends_with(super::STATUS_SUFFIX) || name.ends_with(super::EVENT_TS_SUFFIX) {
            diags.push(Diagnostic::new(
                file,
                loc,
                format!("feature name `{name}` ends with a suffix quiver uses for its own columns"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<FeatureRepo, Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        load_repo(dir.path(), &Limits::default())
    }

    const GOOD: &str = include_str!("../../tests/data/example-repo.yaml");

    #[test]
    fn loads_the_design_example() {
        let repo = load(&[("features.yaml", GOOD)]).unwrap();
        let v = &repo.views["user_txn_stats"];
        assert_eq!(
            v.declared_features(),
            ["txn_count_7d", "amount_sum_7d", "distinct_devices_30d"]
        );
        assert_eq!(v.ttl.as_ref().unwrap().value.to_string(), "45d");
    }

    fn first_error(files: &[(&str, &str)]) -> String {
        load(files).unwrap_err().0[0].to_string()
    }

    #[test]
    fn errors_are_located_with_hints() {
        let e = first_error(&[("a.yaml", &GOOD.replace("sum(amount)", "summ(amount)"))]);
        assert!(e.starts_with("a.yaml:17:"), "{e}");
        assert!(
            e.contains("unknown aggregate `summ`") && e.contains("did you mean `sum`?"),
            "{e}"
        );

        let e = first_error(&[("a.yaml", &GOOD.replace("window: 7d }", "window: 7days }"))]);
        assert!(
            e.contains("unknown unit `a`") || e.contains("not a duration"),
            "{e}"
        );

        let e = first_error(&[("a.yaml", &GOOD.replace("entity: user", "entity: usr"))]);
        assert!(
            e.contains("entity `usr`") && e.contains("did you mean `user`?"),
            "{e}"
        );

        let e = first_error(&[(
            "a.yaml",
            &GOOD.replace("source: transactions", "source: transaction"),
        )]);
        assert!(e.contains("did you mean `transactions`?"), "{e}");

        let e = first_error(&[("a.yaml", &GOOD.replace("ttl: 45d", "tll: 45d"))]);
        assert!(
            e.contains("unknown key `tll`") && e.contains("did you mean `ttl`?"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_across_files_name_both() {
        let e = first_error(&[
            ("a.yaml", GOOD),
            ("b.yaml", "kind: Entity\nname: user\njoin_keys: [id]\n"),
        ]);
        assert!(e.contains("entity `user` is defined twice"), "{e}");
        assert!(e.contains("a.yaml:1"), "{e}");
    }

    #[test]
    fn mixing_forms_is_an_error() {
        let text = GOOD.replace(
            "  - { name: txn_count_7d,         agg: count,                     window: 7d }",
            "  - { name: credit_score }",
        );
        let e = first_error(&[("a.yaml", &text)]);
        assert!(e.contains("mixes aggregates and plain columns"), "{e}");
    }

    #[test]
    fn big_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("huge.yaml")).unwrap();
        f.set_len(50 * 1024 * 1024).unwrap();
        let e = load_repo(dir.path(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("huge.yaml") && e.contains("over the limit"),
            "{e}"
        );
    }
}
