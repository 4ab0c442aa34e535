//! The page in a real headless browser: Debian's chromium, installed with
//! `scripts/browser-env.sh` (the README's test command runs it), driven over the Chrome
//! DevTools Protocol by `tests/browser.py`: load a trace, step through it with j/k, and
//! check what the page shows. `QUIVER_UPDATE_SCREENSHOT=1` refreshes
//! `docs/debugger.png`.

use std::path::PathBuf;
use std::process::Command;

use crate::cli::{bin, serve};
use crate::common::{UNTIL, repo};

fn tool(env: &str, default: &str, hint: &str) -> String {
    if let Ok(p) = std::env::var(env) {
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default);
    if default.starts_with("../") {
        assert!(p.exists(), "no {}: {hint}", p.display());
        return p.to_string_lossy().into_owned();
    }
    default.to_owned()
}

#[tokio::test]
async fn the_page_steps_through_a_trace_with_the_keyboard() {
    let python = tool(
        "QUIVER_PYTHON",
        "../.venv/bin/python",
        "run scripts/browser-env.sh (the README's test command does)",
    );
    let chromium = tool("QUIVER_CHROMIUM", "chromium", "");
    assert!(
        Command::new(&chromium)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "no chromium: run scripts/browser-env.sh (the README's test command does) or set QUIVER_CHROMIUM"
    );
    let dir = repo().await;
    let out = dir.path().join("trace");
    // Run from the repo, as a user would: the page's command shows `--repo .`.
    let o = bin()
        .current_dir(dir.path())
        .args(["trace", "--repo", ".", "novelty", "--entity", "user_id=3"])
        .args([
            "--at",
            &quiver_featurestore::cli::format_time(UNTIL),
            "--out",
            "trace",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trace.json")).unwrap()).unwrap();
    let steps = trace["steps"].as_array().unwrap();
    let udf_step = steps.iter().position(|s| s["kind"] == "udf_call").unwrap();
    let value_step = steps.iter().position(|s| s["kind"] == "value").unwrap();

    let served = serve(&out);
    let shot = match std::env::var("QUIVER_UPDATE_SCREENSHOT") {
        Ok(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/debugger.png"),
        Err(_) => dir.path().join("page.png"),
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser.py");
    let o = Command::new(&python)
        .arg(&script)
        .args([&chromium, &served.url, shot.to_str().unwrap()])
        .args([udf_step.to_string(), value_step.to_string()])
        .output()
        .unwrap();
    let stdout = crate::common::success(&o);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["verdict"], "MATCH");
    assert_eq!(seen["verdict_class"], "verdict MATCH");
    assert_eq!(seen["rail"], steps.len());
    assert_eq!(
        seen["first_title"],
        format!(
            "1/{} · {}",
            steps.len(),
            steps[0]["title"].as_str().unwrap()
        )
    );
    assert!(seen["first_rows"].as_u64().unwrap() > 1, "{seen}");
    assert!(
        seen["changed_cells"].as_u64().unwrap() > 0,
        "rows with changes highlighted: {seen}"
    );
    assert_eq!(seen["after_j"], 1);
    assert_eq!(seen["after_k"], 0);
    assert_eq!(seen["udf_step"], udf_step);
    assert!(
        seen["udf_input_rows"].as_u64().unwrap() > 0
            && seen["udf_input_rows"] == seen["udf_output_rows"],
        "{seen}"
    );
    assert_eq!(seen["value_step"], value_step);
    assert!(seen["compare_rows"].as_u64().unwrap() >= 3, "{seen}");
    assert_eq!(seen["diff_rows"], 0);
    assert!(
        seen["command"]
            .as_str()
            .unwrap()
            .starts_with("quiver-debug trace --repo"),
        "{seen}"
    );
    assert!(
        seen["plan"].as_str().unwrap().contains("PointInTimeExec"),
        "{seen}"
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}
