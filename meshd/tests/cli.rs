//! The `meshd up` flags of userspace mode, through the real binary. (Having an integration test
//! here also makes `cargo test` build `target/<profile>/meshd`, which the end-to-end tests in
//! `tests/` and `netns-tests/` run.)

#![allow(clippy::unwrap_used)] // test code

use std::process::Command;

const MESHD: &str = env!("CARGO_BIN_EXE_meshd");

fn meshd(args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(MESHD)
        .arg("--state-dir")
        .arg(dir.path())
        .args(args)
        .env_remove("MESHD_USERSPACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_documents_the_userspace_flags() {
    let (ok, out, _) = meshd(&["up", "--help"]);
    assert!(ok);
    for flag in ["--userspace", "--socks5", "--serve-tcp", "--endpoint"] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
    assert!(out.contains("127.0.0.1:1055"), "SOCKS5 default missing");
}

#[test]
fn bad_userspace_flags_are_refused_before_anything_starts() {
    let (ok, _, err) = meshd(&["up", "--serve-tcp", "8080"]);
    assert!(!ok);
    assert!(err.contains("MESHPORT:HOST:PORT"), "{err}");
    let (ok, _, err) = meshd(&["up", "--endpoint", "not-an-address"]);
    assert!(!ok);
    assert!(err.contains("not an address"), "{err}");
    let (ok, _, err) = meshd(&["up", "--serve-tcp", "8080:127.0.0.1:8000"]);
    assert!(!ok);
    assert!(err.contains("--serve-tcp needs --userspace"), "{err}");
}
