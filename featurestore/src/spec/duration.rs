//! Windows and TTLs: `90s`, `30m`, `12h`, `7d`, `2w`, and sums such as `1d12h`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const US_PER_S: i64 = 1_000_000;
const UNITS: [(char, i64); 5] = [
    ('w', 7 * 86_400 * US_PER_S),
    ('d', 86_400 * US_PER_S),
    ('h', 3_600 * US_PER_S),
    ('m', 60 * US_PER_S),
    ('s', US_PER_S),
];
/// Longest window or TTL accepted: 100 years.
const MAX_US: i64 = 100 * 365 * 86_400 * US_PER_S;

/// A positive span of time with microsecond resolution, written like `7d` or `1h30m`.
///
/// ```
/// use quiver_featurestore::spec::Duration;
/// let d: Duration = "1d12h".parse().unwrap();
/// assert_eq!(d.as_micros(), 36 * 3_600 * 1_000_000);
/// assert_eq!(d.to_string(), "1d12h");
/// assert!("7days".parse::<Duration>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    micros: i64,
}

impl Duration {
    /// The span in microseconds.
    pub fn as_micros(self) -> i64 {
        self.micros
    }

    /// A span of `micros` microseconds; must be positive.
    pub fn from_micros(micros: i64) -> Option<Self> {
        (micros > 0 && micros <= MAX_US).then_some(Self { micros })
    }
}

const HELP: &str =
    "write a whole number followed by a unit s, m, h, d or w, like `30m`, `7d` or `1d12h`";

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(format!("empty duration; {HELP}"));
        }
        let mut total: i64 = 0;
        let mut digits = String::new();
        let mut last_unit = usize::MAX;
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let Some(idx) = UNITS.iter().position(|(u, _)| *u == c) else {
                return Err(format!(
                    "`{text}` is not a duration: unknown unit `{c}`; {HELP}"
                ));
            };
            if digits.is_empty() {
                return Err(format!(
                    "`{text}` is not a duration: `{c}` has no number before it; {HELP}"
                ));
            }
            if last_unit != usize::MAX && idx <= last_unit {
                return Err(format!(
                    "`{text}` is not a duration: write units from largest to smallest, each once (like `1d12h`)"
                ));
            }
            last_unit = idx;
            let n: i64 = digits
                .parse()
                .map_err(|_| format!("`{text}` is too long a duration"))?;
            total = n
                .checked_mul(UNITS[idx].1)
                .and_then(|v| total.checked_add(v))
                .filter(|v| *v <= MAX_US)
                .ok_or_else(|| format!("`{text}` is longer than 100 years"))?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(format!(
                "`{text}` is not a duration: `{digits}` has no unit; {HELP}"
            ));
        }
        Duration::from_micros(total).ok_or_else(|| format!("`{text}` must be longer than zero"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.micros;
        // Weeks are shown as days: `14d` reads better than `2w` in plans and errors.
        for (unit, size) in UNITS.iter().skip(1) {
            if rest >= *size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        if rest > 0 {
            write!(f, "{rest}us")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, us, back) in [
            ("30m", 30 * 60 * US_PER_S, "30m"),
            ("7d", 7 * 86_400 * US_PER_S, "7d"),
            ("2w", 14 * 86_400 * US_PER_S, "14d"),
            ("1h30m", 90 * 60 * US_PER_S, "1h30m"),
            ("90s", 90 * US_PER_S, "1m30s"),
        ] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.as_micros(), us, "{s}");
            assert_eq!(d.to_string(), back);
            assert_eq!(back.parse::<Duration>().unwrap(), d);
        }
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "",
            "7",
            "d",
            "7days",
            "0d",
            "-1d",
            "1m1h",
            "1d1d",
            "99999999999w",
            "7 d",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }
}
