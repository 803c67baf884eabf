//! Test support for running this workspace's binaries (`coord`, `meshd`, `funnel-edge`) as child
//! processes of a test.
//!
//! The contract: every child started here is a [`Proc`], killed (SIGKILL) and reaped when it
//! drops, so a failed test leaves nothing running; every wait is bounded by a `within` the caller
//! gives; a child's piped stdout is read to the end on a background thread, so it never blocks on
//! a full pipe. This is test code: a failure panics, naming the command and what it printed.
//!
//! [`fuzz`]: a deterministic generator and mutator for mutation fuzzing of parsers.
//!
//! Only `std`: no async runtime, usable from `#[test]` and `#[tokio::test]` alike.

pub mod fuzz;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The path of the workspace binary `name`: `target/<profile>/NAME`, the directory above the
/// running test executable's (`target/<profile>/deps/`).
///
/// Cargo builds only the binaries of the package under test, so the others must be built first.
///
/// # Panics
/// If the binary is missing, with a message saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable is in target/<profile>/deps/");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {name}, or run ./test.sh)",
        path.display()
    );
    path
}

/// A child process that is killed (SIGKILL) and reaped when this drops.
#[derive(Debug)]
pub struct Proc(Child);

impl Proc {
    /// Takes ownership of a spawned child.
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The child, to look at its pipes or status.
    pub fn child(&self) -> &Child {
        &self.0
    }

    /// The child, to wait for it, signal it or take its pipes. Whatever it does, the child is
    /// still killed and reaped on drop (a no-op if it has exited).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl From<Child> for Proc {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with stdout piped (stderr inherited, so it shows with the test's output) and
/// reads stdout line by line until `want` accepts a line, for at most `within`. Returns the
/// process and every line read so far, the accepted one last. Later output is drained in the
/// background.
///
/// # Panics
/// If `cmd` cannot be spawned, or its stdout closes or `within` passes before `want` accepts a
/// line; the message names the command and lists the lines it printed.
pub fn spawn_until(
    mut cmd: Command,
    within: Duration,
    mut want: impl FnMut(&str) -> bool,
) -> (Proc, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens, keep reading anyway: the child must never block on stdout.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + within;
    let mut seen = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return (proc, seen);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("{cmd:?}: no expected output within {within:?}; saw {seen:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = proc.0.try_wait().ok().flatten();
                panic!("{cmd:?}: stdout closed (exit status {status:?}) before the expected output; saw {seen:?}")
            }
        }
    }
}

/// Spawns `cmd` as [`spawn_until`] does and waits, for at most `within`, until it has printed a
/// line starting with each of `prefixes`, in any order. Returns the process and the rest of the
/// first such line for each prefix, in the order of `prefixes`.
///
/// # Panics
/// As [`spawn_until`]; also if `prefixes` is empty.
pub fn spawn_lines(cmd: Command, prefixes: &[&str], within: Duration) -> (Proc, Vec<String>) {
    assert!(
        !prefixes.is_empty(),
        "spawn_lines needs a prefix to wait for"
    );
    let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
    let (proc, _) = spawn_until(cmd, within, |line| {
        for (slot, prefix) in found.iter_mut().zip(prefixes) {
            if let Some(rest) = line.strip_prefix(prefix) {
                slot.get_or_insert_with(|| rest.to_owned());
            }
        }
        found.iter().all(Option::is_some)
    });
    (proc, found.into_iter().flatten().collect())
}

/// Runs `program` with `args` to completion: (whether it succeeded, its stdout then its stderr).
///
/// # Panics
/// If the program cannot be started.
pub fn run(program: impl AsRef<OsStr>, args: &[&str]) -> (bool, String) {
    run_command(Command::new(program).args(args))
}

/// Runs `cmd` to completion with its stdout and stderr captured: (whether it succeeded, its
/// stdout then its stderr).
///
/// # Panics
/// If the command cannot be started.
pub fn run_command(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `cmd` to completion and returns its standard output.
///
/// # Panics
/// If the command cannot be started or fails (the message has its standard error).
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it for a listener that is
/// closed again). Another process may take it before the caller binds it: prefer letting the
/// program under test bind `:0` and print its address, where it can.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

#[cfg(test)]
mod tests;
