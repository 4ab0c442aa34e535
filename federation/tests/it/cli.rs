//! The `quiver-fed` binary: each bank makes its own keys and the operator only ever
//! sees public material; exit codes 0/1/2; a closed stdout is no panic.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver-fed"))
        .args(args)
        .env_remove("QUIVER_LOG")
        .output()
        .expect("run quiver-fed")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn banks_make_their_own_keys_and_the_operator_signs_only_public_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let op = tmp.path().join("operator");
    let mut requests = Vec::new();
    for bank in ["bank_a", "bank_b", "bank_c"] {
        let dir = tmp.path().join(bank);
        let out = ok(&fed(&[
            "keygen",
            "--bank",
            bank,
            "--dir",
            dir.to_str().unwrap(),
            "--output",
            "json",
        ]));
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["public_key"].as_str().unwrap().len(), 64);
        // The request holds no private key.
        let req = std::fs::read_to_string(dir.join(format!("{bank}.request.json"))).unwrap();
        assert!(!req.contains("PRIVATE KEY"), "{req}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [format!("{bank}.key"), format!("{bank}.identity")] {
                let mode = std::fs::metadata(dir.join(&f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
            }
        }
        // Running keygen again never overwrites a bank's private key.
        let again = fed(&["keygen", "--bank", bank, "--dir", dir.to_str().unwrap()]);
        assert_eq!(again.status.code(), Some(1));
        requests.push(dir.join(format!("{bank}.request.json")));
    }
    ok(&fed(&["ca", "init", "--dir", op.to_str().unwrap()]));
    let mut sign = vec!["ca", "sign", "--dir", op.to_str().unwrap()];
    sign.extend(requests.iter().map(|p| p.to_str().unwrap()));
    ok(&fed(&sign));
    // The operator holds certificates, the roster and templates: no bank's private key.
    let held = files(&op);
    for bank in ["bank_a", "bank_b", "bank_c"] {
        assert!(held.contains(&format!("{bank}.pem")), "{held:?}");
        assert!(!held.contains(&format!("{bank}.key")), "{held:?}");
        assert!(!held.contains(&format!("{bank}.identity")), "{held:?}");
    }
    assert!(held.contains(&"roster.json".to_string()));
    // The certificate names the bank, and the roster carries the bank's own key.
    let roster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(op.join("roster.json")).unwrap()).unwrap();
    let req: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&requests[1]).unwrap()).unwrap();
    assert_eq!(roster[1]["name"], "bank_b");
    assert_eq!(roster[1]["public_key"], req["public_key"]);
    let pem = std::fs::read(op.join("bank_b.pem")).unwrap();
    let der = x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents;
    assert_eq!(
        quiver_federation::service::pki::common_name(&der).as_deref(),
        Some("bank_b")
    );
    // A request whose certificate request does not verify is refused.
    let mut bad = req.clone();
    // One base64 character of the request's signature changed.
    let csr = req["csr"].as_str().unwrap();
    let end = csr.find("-----END").unwrap();
    let pos = csr[..end].trim_end().len() - 6;
    let mut tampered = csr.to_string();
    let flipped = if &csr[pos..pos + 1] == "A" { "B" } else { "A" };
    tampered.replace_range(pos..pos + 1, flipped);
    bad["csr"] = serde_json::json!(tampered);
    let bad_path = tmp.path().join("bad.request.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let out = fed(&[
        "ca",
        "sign",
        "--dir",
        op.to_str().unwrap(),
        bad_path.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_are_0_1_2_and_a_closed_pipe_is_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    // A missing file: the user's to fix.
    let out = fed(&[
        "ledger",
        "--file",
        tmp.path().join("none.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = fed(&[
        "worker",
        "--config",
        tmp.path().join("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    // --output json on failure: one JSON document naming the kind.
    let out = fed(&[
        "ledger",
        "--file",
        "/nonexistent/l.json",
        "--output",
        "json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"], "input");
    // Unknown flags are clap's usage errors: 2.
    assert_eq!(fed(&["ledger", "--bogus"]).status.code(), Some(2));
    // stdout closed before the program writes: exit 0, no panic message.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver-fed"))
        .args(["keygen", "--bank", "bank_x", "--dir"])
        .arg(tmp.path().join("x"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
