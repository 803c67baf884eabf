//! The helpers against `sh`: no workspace binary needed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

#[test]
#[should_panic(expected = "is missing: build it first (cargo build -p testkit-no-such-bin")]
fn a_missing_binary_says_to_build_it() {
    binary("testkit-no-such-bin");
}

#[test]
fn a_proc_is_killed_and_reaped_on_drop() {
    let proc = Proc::new(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = proc.id();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(proc);
    // Reaped, not a zombie: the pid is gone at once.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn spawn_until_returns_the_lines_up_to_the_wanted_one() {
    let (_proc, lines) = spawn_until(
        sh("echo one; echo two; echo three; exec sleep 30"),
        Duration::from_secs(10),
        |l| l == "two",
    );
    assert_eq!(lines, ["one", "two"]);
}

#[test]
#[should_panic(expected = "no expected output within")]
fn spawn_until_gives_up_after_within() {
    spawn_until(
        sh("echo one; exec sleep 30"),
        Duration::from_millis(300),
        |_| false,
    );
}

#[test]
#[should_panic(expected = "stdout closed")]
fn spawn_until_fails_when_the_process_exits_first() {
    spawn_until(sh("echo one"), Duration::from_secs(10), |_| false);
}

#[test]
fn spawn_lines_returns_the_rest_of_each_line_in_prefix_order() {
    let (_proc, rest) = spawn_lines(
        sh("echo noise; echo 'b: 2'; echo 'a: 1'; echo 'a: 3'; exec sleep 30"),
        &["a: ", "b: "],
        Duration::from_secs(10),
    );
    assert_eq!(rest, ["1", "2"]);
}

#[test]
fn later_output_is_drained() {
    // Far more than a pipe buffer after the line waited for: the shell exits only if someone
    // keeps reading.
    let script = "echo ready; i=0; while [ $i -lt 30000 ]; do echo line $i; i=$((i+1)); done";
    let (mut proc, _) = spawn_lines(sh(script), &["ready"], Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc.child_mut().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the child blocked on stdout");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_reports_success_and_both_streams() {
    assert_eq!(run("sh", &["-c", "echo out"]), (true, "out\n".to_owned()));
    assert_eq!(
        run("sh", &["-c", "echo out; echo err >&2; exit 3"]),
        (false, "out\nerr\n".to_owned())
    );
}

#[test]
fn a_free_port_can_be_bound() {
    let port = free_port();
    assert_ne!(port, 0);
    TcpListener::bind(("127.0.0.1", port)).unwrap();
}
