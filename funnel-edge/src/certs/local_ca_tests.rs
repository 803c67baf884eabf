#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

fn verifier(ca: &LocalCa) -> Arc<WebPkiServerVerifier> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap())
        .unwrap();
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
}

fn verify_at(ca: &LocalCa, key: &CertifiedKey, name: &str, t: SystemTime) -> bool {
    let unix = UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    verifier(ca)
        .verify_server_cert(
            key.end_entity_cert().unwrap(),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            unix,
        )
        .is_ok()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A clock that tests move by hand: seconds after `base`.
fn manual_clock() -> (
    Arc<AtomicU64>,
    impl Fn() -> SystemTime + Send + Sync + 'static,
) {
    let base = SystemTime::now();
    let offset = Arc::new(AtomicU64::new(0));
    let o = offset.clone();
    (offset, move || {
        base + Duration::from_secs(o.load(Ordering::SeqCst))
    })
}

#[test]
fn creates_files_with_modes_and_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("edge/state");
    let ca = LocalCa::open(&state, "funnel.localhost").unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ca.key")), 0o600);
    assert_eq!(mode(&state.join("ca.pem")), 0o644);
    assert_eq!(
        fs::read_to_string(state.join("ca.pem")).unwrap(),
        ca.ca_pem()
    );
    assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let names: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");

    let again = LocalCa::open(&state, "FUNNEL.localhost.").unwrap();
    assert_eq!(again.ca_pem(), ca.ca_pem());
    // A leaf from the reopened CA verifies against the first CA's certificate.
    let leaf = again.certified_key("hello.funnel.localhost").unwrap();
    assert!(verify_at(
        &ca,
        &leaf,
        "hello.funnel.localhost",
        SystemTime::now()
    ));
}

#[test]
fn leaf_is_valid_about_thirty_days_for_its_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    let now = SystemTime::now();
    let leaf = ca.certified_key("Hello.Funnel.Localhost").unwrap();
    assert!(verify_at(&ca, &leaf, "hello.funnel.localhost", now));
    assert!(verify_at(
        &ca,
        &leaf,
        "hello.funnel.localhost",
        now + 29 * DAY
    ));
    assert!(!verify_at(
        &ca,
        &leaf,
        "hello.funnel.localhost",
        now + 31 * DAY
    ));
    assert!(!verify_at(&ca, &leaf, "other.funnel.localhost", now));
    // Same name (any case) → the cached leaf.
    let same = ca.certified_key("hello.funnel.localhost").unwrap();
    assert!(Arc::ptr_eq(&leaf, &same));
}

#[test]
fn refuses_names_outside_the_domain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    for bad in [
        "evil.example.com",
        "a.b.funnel.localhost",
        "funnel.localhost",
        "x*.funnel.localhost",
    ] {
        assert!(
            matches!(ca.certified_key(bad), Err(CertError::NotOurName { .. })),
            "{bad}"
        );
    }
    assert_eq!(ca.lock_cache().len(), 0);
}

#[test]
fn reissues_when_less_than_seven_days_remain() {
    let dir = tempfile::tempdir().unwrap();
    let (offset, clock) = manual_clock();
    let ca = LocalCa::open(dir.path(), "funnel.localhost")
        .unwrap()
        .with_clock(clock);
    let first = ca.certified_key("hello.funnel.localhost").unwrap();
    offset.store((22 * DAY).as_secs(), Ordering::SeqCst);
    let cached = ca.certified_key("hello.funnel.localhost").unwrap();
    assert!(Arc::ptr_eq(&first, &cached), "8 days left: still cached");
    offset.store((23 * DAY).as_secs() + 1, Ordering::SeqCst);
    let renewed = ca.certified_key("hello.funnel.localhost").unwrap();
    assert!(
        !Arc::ptr_eq(&first, &renewed),
        "under 7 days left: re-issued"
    );
    let later = SystemTime::now() + 40 * DAY;
    assert!(verify_at(&ca, &renewed, "hello.funnel.localhost", later));
    assert!(!verify_at(&ca, &first, "hello.funnel.localhost", later));
}

#[test]
fn cache_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open(dir.path(), "funnel.localhost")
        .unwrap()
        .with_leaf_policy(LeafPolicy {
            max_cached: 2,
            ..LeafPolicy::default()
        });
    let a = ca.certified_key("a.funnel.localhost").unwrap();
    let b = ca.certified_key("b.funnel.localhost").unwrap();
    let c = ca.certified_key("c.funnel.localhost").unwrap();
    assert_eq!(ca.lock_cache().len(), 2);
    assert!(Arc::ptr_eq(
        &c,
        &ca.certified_key("c.funnel.localhost").unwrap()
    ));
    assert!(Arc::ptr_eq(
        &b,
        &ca.certified_key("b.funnel.localhost").unwrap()
    ));
    assert!(
        !Arc::ptr_eq(&a, &ca.certified_key("a.funnel.localhost").unwrap()),
        "a was evicted"
    );
    assert_eq!(ca.lock_cache().len(), 2);
}

#[test]
fn ca_for_another_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    let err = LocalCa::open(dir.path(), "funnel.example.com").unwrap_err();
    assert!(matches!(err, CertError::BadCa { .. }), "{err}");
    assert!(err.to_string().contains("another domain"), "{err}");
    // Still usable for its own domain.
    LocalCa::open(dir.path(), "funnel.localhost").unwrap();
}

#[test]
fn foreign_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    keys::keyfile::write_private(&dir.path().join("ca.key"), other.serialize_pem().as_bytes())
        .unwrap();
    let err = LocalCa::open(dir.path(), "funnel.localhost").unwrap_err();
    assert!(matches!(err, CertError::BadCa { .. }), "{err}");
}

#[test]
fn missing_key_with_certificate_is_an_error_missing_certificate_is_remade() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    let key_before = fs::read(dir.path().join("ca.key")).unwrap();
    fs::remove_file(dir.path().join("ca.pem")).unwrap();
    let remade = LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    assert_eq!(fs::read(dir.path().join("ca.key")).unwrap(), key_before);
    assert_ne!(remade.ca_pem(), first.ca_pem());

    fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = LocalCa::open(dir.path(), "funnel.localhost").unwrap_err();
    assert!(matches!(err, CertError::BadCa { .. }), "{err}");
    assert!(
        !dir.path().join("ca.key").exists(),
        "no new key behind ca.pem's back"
    );
}

#[test]
fn group_readable_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::open(dir.path(), "funnel.localhost").unwrap();
    fs::set_permissions(dir.path().join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = LocalCa::open(dir.path(), "funnel.localhost").unwrap_err();
    assert!(matches!(err, CertError::KeyFile(_)), "{err}");
}

#[test]
fn concurrent_first_open_agrees_on_one_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pems: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| LocalCa::open(dir.path(), "funnel.localhost").unwrap()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().ca_pem().to_owned())
            .collect()
    });
    assert!(pems.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        pems[0]
    );
}

#[test]
fn invalid_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalCa::open(dir.path(), "bad_domain").unwrap_err();
    assert!(matches!(err, CertError::InvalidDomain(_)), "{err}");
}
