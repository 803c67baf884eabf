//! Running programs with bounded waits.
//!
//! Contract: every function here returns within its timeout plus a short, fixed grace period.
//! Children run in their own process group; a child that times out, or whose [`Spawned`] guard
//! is dropped, has its whole group killed with SIGKILL and is reaped. Errors carry the command
//! line and what it wrote to stderr.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

use crate::{Error, Result};

/// How long to wait for output readers after the child exited (a grandchild may hold the pipe).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a SIGKILLed child to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Renders `cmd` as a shell-like line for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut line = quote(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

type Buf = Arc<Mutex<Vec<u8>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn text(buf: &Buf) -> String {
    String::from_utf8_lossy(&lock(buf)).into_owned()
}

/// Copies `src` into a shared buffer on a thread; the receiver fires when `src` is closed.
fn capture(mut src: impl Read + Send + 'static) -> (Buf, mpsc::Receiver<()>) {
    let buf = Buf::default();
    let sink = Arc::clone(&buf);
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = src.read(&mut chunk) {
            lock(&sink).extend_from_slice(&chunk[..n]);
        }
        let _ = done_tx.send(());
    });
    (buf, done)
}

/// Polls `child` until it exits or `deadline` passes (then `Ok(None)`).
fn wait_deadline(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILLs the child's process group and the child, then reaps it (bounded). Only for a child
/// not reaped yet: its unreaped pid cannot have been reused, so neither can its group id.
fn kill_and_reap(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        // The group may already be gone (ESRCH); nothing to do then.
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let _ = child.kill();
    let _ = wait_deadline(child, Instant::now() + REAP_GRACE);
}

fn spawn_piped(cmd: &mut Command, stdin: Stdio) -> Result<Child> {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn().map_err(|source| Error::Spawn {
        cmd: describe(cmd),
        source,
    })
}

/// Runs `cmd` to completion, feeding it `input` on stdin (or `/dev/null`), within `timeout`.
/// Any exit status is `Ok`; see [`checked`].
pub(crate) fn run_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = spawn_piped(cmd, stdin)?;
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A thread, so a child that does not read its stdin cannot block us past the deadline.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let (out, out_done) = capture(child.stdout.take().ok_or_else(no_pipe)?);
    let (err, err_done) = capture(child.stderr.take().ok_or_else(no_pipe)?);
    let waited = wait_deadline(&mut child, deadline);
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_and_reap(&mut child);
            return Err(Error::Timeout {
                what: format!("`{}`", describe(cmd)),
                timeout,
                detail: text(&err),
            });
        }
        Err(source) => {
            kill_and_reap(&mut child);
            return Err(Error::Io {
                context: format!("waiting for `{}`", describe(cmd)),
                source,
            });
        }
    };
    let drain_deadline = Instant::now() + DRAIN_GRACE;
    for done in [out_done, err_done] {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        let _ = done.recv_timeout(left);
    }
    let stdout = std::mem::take(&mut *lock(&out));
    let stderr = std::mem::take(&mut *lock(&err));
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn no_pipe() -> Error {
    Error::Io {
        context: "child pipe missing".into(),
        source: std::io::ErrorKind::BrokenPipe.into(),
    }
}

/// [`run_timeout`], then [`checked`].
pub(crate) fn run_checked(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let output = run_timeout(cmd, input, timeout)?;
    checked(cmd, output)
}

/// `Ok(output)` when it exited with status 0, else [`Error::Failed`] naming `cmd`.
pub(crate) fn checked(cmd: &Command, output: Output) -> Result<Output> {
    if output.status.success() {
        return Ok(output);
    }
    Err(Error::Failed {
        cmd: describe(cmd),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    })
}

/// Polls `check` every 20 ms until it returns `Ok(true)`, an error, or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
                detail: String::new(),
            });
        }
        thread::sleep(Duration::from_millis(20).min(deadline - now));
    }
}

/// A running background process; dropping it kills its process group and reaps it.
///
/// Its stdout and stderr are captured (read them with [`Spawned::stdout`]/[`Spawned::stderr`]).
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    cmd: String,
    stdout: Buf,
    stderr: Buf,
    /// Set once the child is reaped; its pid may be reused after that.
    exited: Option<ExitStatus>,
}

impl Spawned {
    /// Starts `cmd` in a new process group, stdin from `/dev/null`, output captured.
    pub fn start(mut cmd: Command) -> Result<Spawned> {
        let mut child = spawn_piped(&mut cmd, Stdio::null())?;
        let (stdout, _) = capture(child.stdout.take().ok_or_else(no_pipe)?);
        let (stderr, _) = capture(child.stderr.take().ok_or_else(no_pipe)?);
        Ok(Spawned {
            child,
            cmd: describe(&cmd),
            stdout,
            stderr,
            exited: None,
        })
    }

    /// The child's pid (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.cmd
    }

    /// Everything it wrote to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    /// Everything it wrote to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().map_err(|source| Error::Io {
                context: format!("checking on `{}`", self.cmd),
                source,
            })?;
        }
        Ok(self.exited)
    }

    /// Waits until `needle` appears in its stdout or stderr. Fails early if it exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("{needle:?} in the output of `{}`", self.cmd);
        let result = wait_until(&what, timeout, || {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(true);
            }
            match self.try_wait()? {
                Some(status) => Err(Error::Failed {
                    cmd: self.cmd.clone(),
                    status,
                    stderr: self.stderr(),
                    stdout: self.stdout(),
                }),
                None => Ok(false),
            }
        });
        result.map_err(|err| match err {
            Error::Timeout { what, timeout, .. } => Error::Timeout {
                what,
                timeout,
                detail: format!("stdout: {} stderr: {}", self.stdout(), self.stderr()),
            },
            other => other,
        })
    }

    /// Kills its process group and reaps it; also done on drop. After the child itself has
    /// exited, leftovers in its group are the topology's to kill (its pid may be reused).
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            kill_and_reap(&mut self.child);
            self.exited = self.child.try_wait().ok().flatten();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}
