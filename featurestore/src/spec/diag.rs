//! Located diagnostics: every problem in a feature repo names file, line and column.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::yaml::Loc;

/// One problem in a feature repo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// File, relative to the repo root.
    pub file: PathBuf,
    /// Line, 1-based (0 when the problem concerns the whole file or repo).
    pub line: u32,
    /// Column, 1-based.
    pub column: u32,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `loc` of `file`.
    pub fn new(file: impl Into<PathBuf>, loc: Loc, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: loc.line,
            column: loc.col,
            message: message.into(),
            hint: None,
        }
    }

    /// Add what to write instead.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Add a hint only when there is one.
    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

/// All problems found in one pass over a repo, in file order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Add one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sort by file and position.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 50;
        for (i, d) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "\n... and {} more problems", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The candidate closest to `word`, when one is close enough to be a likely typo: at
/// most one edit per four characters (at least one), or a high Jaro-Winkler similarity.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let max_edits = (lower.chars().count() / 4).max(1);
    candidates
        .into_iter()
        .filter_map(|c| {
            let cl = c.to_ascii_lowercase();
            let edits = strsim::damerau_levenshtein(&lower, &cl);
            let jw = strsim::jaro_winkler(&lower, &cl);
            (edits <= max_edits || jw >= 0.85).then_some((edits, -jw, c))
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, _, c)| c)
}

/// "did you mean `x`?" or a list of what is valid.
pub fn suggest(word: &str, candidates: &[&str]) -> String {
    match nearest(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None if candidates.is_empty() => "nothing is defined yet".to_owned(),
        None => {
            let mut list: Vec<&str> = candidates.iter().take(12).copied().collect();
            list.sort_unstable();
            let more = if candidates.len() > 12 { ", ..." } else { "" };
            format!("valid names: {}{more}", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_typos() {
        assert_eq!(
            nearest("amout", ["amount", "ts", "user_id"]),
            Some("amount")
        );
        assert_eq!(
            nearest("FeatureVeiw", ["Entity", "Source", "FeatureView"]),
            Some("FeatureView")
        );
        assert_eq!(nearest("zzz", ["amount"]), None);
        assert!(suggest("qq", &["b", "a"]).contains("a, b"));
    }
}
