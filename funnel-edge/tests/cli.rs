//! The `funnel-edge` binary: `ca` prints the CA certificate clients trust; `run` says what it
//! needs on first use.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use testkit::stdout_of;

fn edge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_funnel-edge"));
    cmd.env_remove("FUNNEL_EDGE_STATE_DIR")
        .env_remove("FUNNEL_EDGE_DOMAIN");
    cmd
}

#[test]
fn ca_prints_the_pem_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("edge");
    let printed = stdout_of(
        edge()
            .args(["ca", "--domain", "funnel.localhost", "--state-dir"])
            .arg(&state),
    );
    assert!(
        printed.starts_with("-----BEGIN CERTIFICATE-----"),
        "{printed}"
    );
    assert_eq!(
        printed,
        std::fs::read_to_string(state.join("ca.pem")).unwrap()
    );

    // Same CA the second time, found through the environment this time.
    let again = stdout_of(edge().arg("ca").env("FUNNEL_EDGE_STATE_DIR", &state));
    assert_eq!(again, printed);

    // Another domain with the same state dir is an error, not a silent new CA.
    let other = edge()
        .args(["ca", "--domain", "funnel.example.com", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("another domain"));
}

#[test]
fn run_says_what_is_missing_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = edge()
        .arg("run")
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--https-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--coord URL is required the first time"),
        "{err}"
    );
}

#[test]
fn tun_and_userspace_are_one_choice() {
    let out = edge()
        .args(["run", "--userspace", "--tun", "edge1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
