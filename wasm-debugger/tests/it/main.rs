//! The debugger's integration tests: one binary.

mod common;
/// Replays and their verdicts against a real repo (Delta on disk, sled, UDFs).
mod trace;
/// The `quiver-debug` binary and its page over HTTP.
mod cli;
/// The page in a real headless browser (Debian's chromium, driven over CDP).
mod browser;
