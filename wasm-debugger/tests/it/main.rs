//! The debugger's integration tests: one binary.

/// The page in a real headless browser (Debian's chromium, driven over CDP).
mod browser;
/// The `quiver-debug` binary and its page over HTTP.
mod cli;
mod common;
/// Replays and their verdicts against a real repo (Delta on disk, sled, UDFs).
mod trace;
