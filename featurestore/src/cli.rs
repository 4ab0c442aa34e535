//! Small helpers shared by the project's command-line programs (`quiver`,
//! `quiver-fed`, `quiver-debug`).

/// Make a closed stdout end the program quietly with exit code 0, the way `cat` or
/// `git log` behave under `| head`. Rust ignores SIGPIPE, so `println!` to a closed
/// pipe panics with "failed printing to stdout: Broken pipe"; this hook turns exactly
/// that panic into a clean exit and leaves every other panic's report as it was.
pub fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// Log to stderr: warnings by default, `info` (with `debug_target` at debug) at `-v`,
/// everything at debug from `-vv`; `QUIVER_LOG` (an `EnvFilter`) overrides.
///
/// Every line passes through [`crate::storage::redact`] on its way out: a dependency
/// that logs a URL with a SAS token, or a request with a key, prints `***` instead.
/// The Delta kernel's own error logs are off by default: the error quiver reports
/// says the same, with the source and file it concerns.
#[cfg(feature = "cli")]
pub fn init_logging(verbose: u8, debug_target: Option<&str>) {
    let filter = match (verbose, debug_target) {
        (0, _) => "warn,buoyant_kernel=off".to_string(),
        (1, Some(t)) => format!("info,{t}=debug"),
        (1, None) => "info".to_string(),
        _ => "debug".to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUIVER_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(|| RedactingStderr)
        .init();
}

/// Standard error, with secrets redacted from what is written.
#[cfg(feature = "cli")]
struct RedactingStderr;

#[cfg(feature = "cli")]
impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes one whole event per call.
        let text = crate::storage::redact(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The first `n` characters of a hash (all of it when shorter, e.g. from a damaged
/// record), for display.
///
/// ```
/// assert_eq!(quiver_featurestore::cli::short("abcdef", 4), "abcd");
/// assert_eq!(quiver_featurestore::cli::short("ab", 4), "ab");
/// ```
pub fn short(hash: &str, n: usize) -> &str {
    hash.get(..n).unwrap_or(hash)
}

/// A time in UTC microseconds as RFC 3339 with microseconds, what [`parse_time`]
/// reads back; the number itself when it is out of chrono's range.
///
/// ```
/// use quiver_featurestore::cli::format_time;
/// assert_eq!(format_time(1_000_000), "1970-01-01T00:00:01.000000Z");
/// ```
pub fn format_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| us.to_string())
}

/// A time given on a command line: RFC 3339 (`2024-03-01T12:00:00Z`), or a date
/// meaning midnight UTC (`2024-03-01`); UTC microseconds.
///
/// ```
/// use quiver_featurestore::cli::parse_time;
/// assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000_000);
/// assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
/// assert!(parse_time("yesterday").is_err());
/// ```
pub fn parse_time(s: &str) -> crate::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros());
    }
    Err(crate::Error::InvalidRequest(format!(
        "`{s}` is not a time; write 2024-03-01T00:00:00Z or 2024-03-01"
    )))
}
