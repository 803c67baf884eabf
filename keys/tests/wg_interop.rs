//! Interop with the real WireGuard tool: our key text must be byte for byte what `wg genkey`,
//! `wg pubkey` and `wg genpsk` print and accept.
//!
//! Needs `wg` from Debian's `wireguard-tools`. Without it these tests FAIL (so CI cannot pass by
//! accident) unless `MESHFUNNEL_SKIP_WG=1` is set, in which case they say so and pass. The `wg`
//! binary can be overridden with `MESHFUNNEL_WG=/path/to/wg`.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use keys::keyfile::{load_private_key, save_private_key, KeyFileError};
use keys::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};

/// Longest any single `wg` invocation may take before the test kills it and fails.
const WG_TIMEOUT: Duration = Duration::from_secs(20);
/// How many `wg genkey` outputs to cross-check.
const GENKEY_ROUNDS: usize = 20;

fn wg_program() -> String {
    std::env::var("MESHFUNNEL_WG").unwrap_or_else(|_| "wg".to_owned())
}

/// The `wg` program to run, or `None` when it is missing and `MESHFUNNEL_SKIP_WG=1` says to skip.
/// Panics, with instructions, when it is missing and skipping was not asked for.
fn require_wg(test: &str) -> Option<String> {
    let wg = wg_program();
    let missing = match Command::new(&wg)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => {
            let (status, _, _) = finish(child, &format!("{wg} --version"));
            if status.success() {
                return Some(wg);
            }
            format!("`{wg} --version` failed ({status})")
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            format!("`{wg}` was not found (is it in PATH?)")
        }
        Err(e) => format!("`{wg}` could not be run: {e}"),
    };
    if std::env::var("MESHFUNNEL_SKIP_WG").as_deref() == Ok("1") {
        // Written straight to the process's stderr: libtest captures `eprintln!` of passing tests.
        // One write call, so that lines from tests running in parallel do not interleave.
        let line = format!(
            "SKIPPED {test}: {missing}; MESHFUNNEL_SKIP_WG=1 is set, so the WireGuard interop \
             check did not run\n"
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        return None;
    }
    panic!(
        "{missing}. These tests check our key text against the real WireGuard tool: install \
         wireguard-tools (Debian/Ubuntu: `apt-get install -y wireguard-tools`), or set \
         MESHFUNNEL_SKIP_WG=1 to skip them explicitly."
    );
}

/// Waits for `child` at most [`WG_TIMEOUT`]; kills it and panics past that. Its output must fit
/// in the pipe buffers (a few hundred bytes here), so it is read after it exits.
fn finish(mut child: Child, what: &str) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>) {
    let deadline = Instant::now() + WG_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("waiting for wg") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{what}` did not finish within {WG_TIMEOUT:?}");
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out).expect("reading wg stdout");
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut err).expect("reading wg stderr");
    }
    (status, out, err)
}

/// Runs `wg <args>` with `stdin` bytes piped in; returns stdout. Panics on failure.
fn wg_run(wg: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let what = format!("{wg} {}", args.join(" "));
    let mut child = Command::new(wg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{what}`: {e}"));
    {
        // Dropped at the end of this block: `wg pubkey` reads to end of input.
        let mut input = child.stdin.take().expect("wg stdin is piped");
        input.write_all(stdin).expect("writing to wg stdin");
    }
    let (status, out, err) = finish(child, &what);
    assert!(
        status.success(),
        "`{what}` failed ({status}): {}",
        String::from_utf8_lossy(&err)
    );
    out
}

/// Runs `wg <args>` with stdin and stdout connected to the given files; returns stdout as text
/// when it was piped.
fn wg_with_files(wg: &str, args: &[&str], stdin: Option<File>, stdout: Option<File>) -> String {
    let what = format!("{wg} {}", args.join(" "));
    let child = Command::new(wg)
        .args(args)
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(stdout.map_or_else(Stdio::piped, Stdio::from))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{what}`: {e}"));
    let (status, out, err) = finish(child, &what);
    assert!(
        status.success(),
        "`{what}` failed ({status}): {}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8(out).expect("wg prints ASCII")
}

/// One line of `wg` output, newline removed; checks the key-text shape.
fn key_line(out: Vec<u8>) -> String {
    let text = String::from_utf8(out).expect("wg prints ASCII");
    let line = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("wg output should end in one newline: {text:?}"));
    assert!(!line.contains('\n'), "one line expected: {text:?}");
    assert_eq!(line.len(), 44, "a key is 44 base64 characters: {line:?}");
    line.to_owned()
}

fn wg_pubkey(wg: &str, private_text: &str) -> String {
    key_line(wg_run(
        wg,
        &["pubkey"],
        format!("{private_text}\n").as_bytes(),
    ))
}

#[test]
fn our_generated_key_gives_the_same_public_key_as_wg() {
    let Some(wg) = require_wg("our_generated_key_gives_the_same_public_key_as_wg") else {
        return;
    };
    for _ in 0..5 {
        let k = PrivateKey::generate();
        let ours = k.public_key().to_base64();
        assert_eq!(wg_pubkey(&wg, &k.to_base64()), ours);
        // And the text parses back to the same public key.
        assert_eq!(ours.parse::<PublicKey>(), Ok(k.public_key()));
    }
}

#[test]
fn wg_genkey_keys_parse_and_reencode_identically() {
    let Some(wg) = require_wg("wg_genkey_keys_parse_and_reencode_identically") else {
        return;
    };
    for _ in 0..GENKEY_ROUNDS {
        let text = key_line(wg_run(&wg, &["genkey"], b""));
        let k: PrivateKey = text.parse().expect("wg genkey output parses as PrivateKey");
        assert_eq!(
            *k.to_base64(),
            text,
            "re-encoding is byte-identical to wg's text"
        );
        let theirs = wg_pubkey(&wg, &text);
        assert_eq!(k.public_key().to_base64(), theirs);
        let pk: PublicKey = theirs
            .parse()
            .expect("wg pubkey output parses as PublicKey");
        assert_eq!(pk, k.public_key());
        assert_eq!(pk.to_base64(), theirs);
    }
}

#[test]
fn wg_genpsk_parses_and_reencodes_identically() {
    let Some(wg) = require_wg("wg_genpsk_parses_and_reencodes_identically") else {
        return;
    };
    for _ in 0..5 {
        let text = key_line(wg_run(&wg, &["genpsk"], b""));
        let psk: PresharedKey = text
            .parse()
            .expect("wg genpsk output parses as PresharedKey");
        assert_eq!(*psk.to_base64(), text);
        assert_eq!(STANDARD.encode(psk.as_bytes()), text);
    }
}

/// `wg pubkey` clamps whatever it is given; our `from_bytes` must clamp the same way.
#[test]
fn unclamped_bytes_give_the_same_public_key_as_wg() {
    let Some(wg) = require_wg("unclamped_bytes_give_the_same_public_key_as_wg") else {
        return;
    };
    let mut raw = [0u8; KEY_LEN];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
    }
    raw[0] |= 7; // low bits set: clamping must clear them
    raw[31] |= 0x80; // high bit set: clamping must clear it
    for raw in [raw, [0xffu8; KEY_LEN], [0u8; KEY_LEN]] {
        let k = PrivateKey::from_bytes(raw);
        assert_eq!(
            wg_pubkey(&wg, &STANDARD.encode(raw)),
            k.public_key().to_base64()
        );
    }
}

#[test]
fn key_files_interoperate_with_wg() {
    let Some(wg) = require_wg("key_files_interoperate_with_wg") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");

    // Ours -> wg: `wg pubkey < file`.
    let ours_path = dir.path().join("ours.key");
    let k = PrivateKey::generate();
    save_private_key(&ours_path, &k).expect("save_private_key");
    let file = File::open(&ours_path).expect("open our key file");
    let out = wg_with_files(&wg, &["pubkey"], Some(file), None);
    assert_eq!(out, format!("{}\n", k.public_key().to_base64()));

    // wg -> ours: `wg genkey > file`, then chmod 600.
    let theirs_path = dir.path().join("theirs.key");
    let file = File::create(&theirs_path).expect("create key file");
    let empty = wg_with_files(&wg, &["genkey"], None, Some(file));
    assert_eq!(empty, "", "stdout went to the file");
    fs::set_permissions(&theirs_path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let text = fs::read_to_string(&theirs_path).expect("read wg's key file");
    let loaded = load_private_key(&theirs_path).expect("load_private_key of wg genkey's file");
    assert_eq!(
        format!("{}\n", *loaded.to_base64()),
        text,
        "same bytes as wg wrote"
    );
    assert_eq!(
        wg_pubkey(&wg, text.trim_end()),
        loaded.public_key().to_base64()
    );

    // Our own writer produces exactly what `wg genkey > file` does: base64 and one newline.
    save_private_key(&ours_path, &loaded).expect("save_private_key");
    assert_eq!(
        fs::read_to_string(&ours_path).expect("read our key file"),
        text
    );

    // Group/other-readable: refused, with the fix in the message.
    fs::set_permissions(&theirs_path, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let err = load_private_key(&theirs_path).expect_err("a 0644 key file must be refused");
    assert!(
        matches!(err, KeyFileError::TooOpen { mode: 0o644, ref path } if path == &theirs_path),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert!(
        !err.to_string().contains(text.trim_end()),
        "error never echoes the key"
    );
}

#[test]
fn wg_and_we_refuse_the_same_garbage() {
    let Some(wg) = require_wg("wg_and_we_refuse_the_same_garbage") else {
        return;
    };
    let short = STANDARD.encode([1u8; 31]);
    let long = STANDARD.encode([1u8; 33]);
    let bad_char = format!("{}!", &STANDARD.encode([1u8; 32])[..43]);
    for bad in [
        "",
        "hello",
        short.as_str(),
        long.as_str(),
        bad_char.as_str(),
    ] {
        assert!(bad.parse::<PrivateKey>().is_err(), "we accepted {bad:?}");
        let mut child = Command::new(&wg)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wg pubkey");
        // wg may give up before reading everything: a broken pipe here is not a failure.
        let _ = child
            .stdin
            .take()
            .expect("piped")
            .write_all(format!("{bad}\n").as_bytes());
        let (status, _, _) = finish(child, "wg pubkey (garbage)");
        assert!(!status.success(), "wg accepted {bad:?}");
    }
}
