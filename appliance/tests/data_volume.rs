//! The encrypted data volume (`appliance::data`, `pk-appliance data`) with the real
//! `cryptsetup` on a file and a software TPM: a new volume opens through its TPM slot only
//! while the PCRs hold, the recovery code opens it after they change and seals the TPM
//! slot again, a slot from another volume does not open it, a device that holds a file
//! system is never touched, and a box without a TPM keeps the passphrase in a clear slot
//! only until the recovery code is enrolled.
//!
//! `cryptsetup open` needs the kernel's device mapper, which this test machine does not
//! give: opening and mounting are exercised by the QEMU suite; here the passphrase a slot
//! gives is checked against the LUKS keyslot (`cryptsetup open --test-passphrase`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use appliance::data::{Cipher, Contents, DataError, Volume};
use hsm::UnwrapError;
use hsm::recovery::{RecoveryCode, RecoveryProtector};
use hsm::tpm::{PcrBank, PcrPolicy, TpmOptions, TpmProtector};

/// A scratch directory with a 40 MiB file to put a volume on (LUKS2's header takes 16).
fn device(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    path
}

/// The TPM protector bound to PCR 16 (the debug PCR, which the test can change as a new
/// firmware would change PCR 0).
fn tpm(tpm: &hsm::sim::Swtpm) -> TpmProtector {
    TpmProtector::new(tpm.tcti(), None).with_options(TpmOptions {
        pcrs: Some(PcrPolicy {
            bank: PcrBank::Sha256,
            pcrs: vec![16],
        }),
        signed_pcrs: None,
        pcr_signature: None,
    })
}

fn extend_pcr16(tpm: &hsm::sim::Swtpm) {
    let out = Command::new("tpm2_pcrextend")
        .args([
            "-T",
            &tpm.tcti(),
            "16:sha256=0101010101010101010101010101010101010101010101010101010101010101",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A configuration file for `pk-appliance data` with this TPM (or none) and PCR 16.
fn config(dir: &Path, tcti: Option<&str>) -> PathBuf {
    let path = dir.join("config.toml");
    let mut text = format!("state_dir = {:?}\ntpm_pcrs = \"16\"\n", dir.join("state"));
    if let Some(tcti) = tcti {
        text.push_str(&format!("tpm_tcti = {tcti:?}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `pk-appliance data ARGS` with `stdin`; its exit code, stdout and stderr.
fn pk_data(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pk-appliance"))
        .arg("data")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn require_tools() {
    hsm::sim::require_program("cryptsetup", "cryptsetup-bin").unwrap();
    hsm::sim::require_program("blkid", "util-linux").unwrap();
    hsm::sim::require_program("tpm2_pcrextend", "tpm2-tools").unwrap();
}

#[test]
fn a_new_volume_opens_through_its_tpm_slot_only_while_the_pcrs_hold() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let swtpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let volume = Volume::new(device(dir.path(), "data.img"));
    assert_eq!(volume.contents().unwrap(), Contents::Empty);

    let made = volume
        .format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    assert_eq!(volume.contents().unwrap(), Contents::Luks);
    let token = volume.token().unwrap();
    assert_eq!(token.slots.len(), 1);
    assert_eq!(token.slots[0].kind(), Some(hsm::Kind::Tpm));
    assert!(!token.has_clear_slot());
    let opened = volume.unlock(&tpm(&swtpm)).unwrap();
    assert_eq!(opened.expose(), made.expose());
    volume.check(&opened).unwrap();
    // The passphrase is nowhere in the header.
    let dump = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(volume.device())
        .output()
        .unwrap();
    let hex: String = made.expose().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!String::from_utf8_lossy(&dump.stdout).contains(&hex));

    // A changed PCR (another firmware): the TPM refuses, and says it is the policy.
    extend_pcr16(&swtpm);
    match volume.unlock(&tpm(&swtpm)) {
        Err(DataError::Unwrap {
            source: UnwrapError::PolicyMismatch { .. },
            ..
        }) => {}
        other => panic!("expected a policy mismatch, got {other:?}"),
    }
}

#[test]
fn the_recovery_code_opens_it_after_a_pcr_change_and_seals_the_tpm_slot_again() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let swtpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let device = device(dir.path(), "data.img");
    let volume = Volume::new(&device);
    volume
        .format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    let config = config(dir.path(), Some(&swtpm.tcti()));
    let (device_arg, config_arg) = (device.to_str().unwrap(), config.to_str().unwrap());

    // Enrolled as the console does at claim: the code on standard input.
    let code = RecoveryCode::generate();
    let words = code.to_words();
    let (status, out, err) = pk_data(
        &[
            "enrol-recovery",
            "--device",
            device_arg,
            "--config",
            config_arg,
        ],
        &words,
    );
    assert_eq!(status, 0, "{out}{err}");
    let (status, out, err) = pk_data(
        &["status", "--device", device_arg, "--config", config_arg],
        "",
    );
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains(r#""kind":"tpm""#) && out.contains(r#""kind":"recovery""#),
        "{out}"
    );
    let first_word = words.split_whitespace().next().unwrap();
    assert!(!out.contains(first_word) && !err.contains(first_word));

    extend_pcr16(&swtpm);
    assert!(volume.unlock(&tpm(&swtpm)).is_err());
    let wrong = RecoveryProtector::new(RecoveryCode::generate());
    assert!(matches!(
        volume.unlock(&wrong),
        Err(DataError::Unwrap {
            source: UnwrapError::WrongRecoveryCode,
            ..
        })
    ));
    let passphrase = volume
        .unlock(&RecoveryProtector::new(
            RecoveryCode::parse(&words).unwrap(),
        ))
        .unwrap();

    // Sealed again to the machine as it is now: the TPM opens it by itself again, and
    // there is still one TPM slot beside the recovery code.
    volume
        .seal_again(&passphrase, &tpm(&swtpm), "TPM again")
        .unwrap();
    assert_eq!(
        volume.unlock(&tpm(&swtpm)).unwrap().expose(),
        passphrase.expose()
    );
    let kinds: Vec<_> = volume
        .token()
        .unwrap()
        .slots
        .iter()
        .map(|s| s.kind())
        .collect();
    assert_eq!(kinds, [Some(hsm::Kind::Recovery), Some(hsm::Kind::Tpm)]);
}

#[test]
fn a_slot_copied_from_another_volume_does_not_open_this_one() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let swtpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let a = Volume::new(device(dir.path(), "a.img"));
    let b = Volume::new(device(dir.path(), "b.img"));
    a.format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    b.format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    let exported = Command::new("cryptsetup")
        .args(["token", "export", "--token-id", "0"])
        .arg(a.device())
        .output()
        .unwrap();
    let mut import = Command::new("cryptsetup")
        .args([
            "token",
            "import",
            "--token-id",
            "0",
            "--token-replace",
            "--json-file=-",
        ])
        .arg(b.device())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(&exported.stdout)
        .unwrap();
    assert!(import.wait().unwrap().success());
    assert!(b.unlock(&tpm(&swtpm)).is_err(), "A's slot opened B");
}

#[test]
fn a_device_that_holds_anything_else_is_left_alone() {
    require_tools();
    hsm::sim::require_program("mkfs.ext4", "e2fsprogs").unwrap();
    hsm::sim::require_program("mkswap", "util-linux").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An ext4 (a data partition made by an older image): never formatted over. (`open`
    // maps it as it is with dmsetup, for the QEMU suite.)
    let old = device(dir.path(), "old.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&old)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(&old).unwrap();
    let volume = Volume::new(&old);
    assert_eq!(volume.contents().unwrap(), Contents::Other("ext4".into()));
    assert!(matches!(
        volume.format(Cipher::AesXts, None),
        Err(DataError::NotEmpty { .. })
    ));
    assert!(
        std::fs::read(&old).unwrap() == before,
        "the ext4 was written"
    );

    // Anything else (here swap): `open` refuses it and writes nothing.
    let swap = device(dir.path(), "swap.img");
    let out = Command::new("mkswap").arg(&swap).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(&swap).unwrap();
    let config = config(dir.path(), None);
    let (status, _, err) = pk_data(
        &[
            "open",
            "--device",
            swap.to_str().unwrap(),
            "--name",
            "pk-test",
            "--config",
            config.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(status, 1);
    assert!(
        err.contains("holds swap") && err.contains("left as it is"),
        "{err}"
    );
    assert!(
        std::fs::read(&swap).unwrap() == before,
        "the device was written"
    );
}

#[test]
fn without_a_tpm_the_passphrase_is_clear_only_until_a_recovery_code_replaces_it() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let device = device(dir.path(), "data.img");
    let volume = Volume::new(&device);
    // AES-XTS: formatting with Adiantum asks the device mapper whether the kernel has it.
    let made = volume.format(Cipher::AesXts, None).unwrap();
    assert!(volume.token().unwrap().has_clear_slot());
    assert_eq!(
        volume.unlock_clear().unwrap().unwrap().expose(),
        made.expose()
    );

    let words = RecoveryCode::generate().to_words();
    // No tpm_tcti, and a path that is no TPM: the clear slot opens it.
    let config = config(dir.path(), None);
    let (status, out, err) = pk_data(
        &[
            "enrol-recovery",
            "--device",
            device.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &words,
    );
    assert_eq!(status, 0, "{out}{err}");
    assert!(out.contains("clear slot is gone"), "{out}");
    assert!(!volume.token().unwrap().has_clear_slot());
    assert!(volume.unlock_clear().unwrap().is_none());
    let opened = volume
        .unlock(&RecoveryProtector::new(
            RecoveryCode::parse(&words).unwrap(),
        ))
        .unwrap();
    assert_eq!(opened.expose(), made.expose());
}

/// A request to the gate from 192.0.2.1 (a documentation address: nothing is sent).
fn gate_request(
    method: &str,
    path: &str,
    json: Option<serde_json::Value>,
) -> axum::http::Request<axum::body::Body> {
    let mut builder = axum::http::Request::builder().method(method).uri(path);
    let body = match json {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            axum::body::Body::from(value.to_string())
        }
        None => axum::body::Body::empty(),
    };
    let mut request = builder.body(body).unwrap();
    request
        .extensions_mut()
        .insert(appliance::console::ClientAddr(std::net::SocketAddr::from(
            ([192, 0, 2, 1], 50000),
        )));
    request
}

async fn gate_call(
    app: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, String) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_locked_data_console_takes_only_the_right_recovery_code_and_throttles_guesses() {
    use appliance::console::gate::{Gate, router};
    use axum::http::StatusCode;
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let swtpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let volume = Volume::new(device(dir.path(), "data.img"));
    let passphrase = volume
        .format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    let code = RecoveryCode::generate();
    let words = code.to_words();
    volume
        .enroll(&passphrase, &RecoveryProtector::new(code), "recovery code")
        .unwrap();
    let reason = "the TPM refused: PCR 0 changed".to_owned();
    let app = router(Gate::new(volume, "pk-test", reason.clone(), None, None));

    // The page says why, asks for the code, and carries the console's headers.
    let (status, headers, body) = gate_call(&app, gate_request("GET", "/", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(&reason) && body.contains(r#"name="recovery_code""#),
        "{body}"
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let (_, _, state) = gate_call(&app, gate_request("GET", "/api/data", None)).await;
    assert!(state.contains("data_locked"), "{state}");

    // A wrong code, then something that is no code at all.
    let wrong = RecoveryCode::generate().to_words();
    let (status, _, body) = gate_call(
        &app,
        gate_request(
            "POST",
            "/api/data/unlock",
            Some(serde_json::json!({ "recovery_code": wrong.as_str() })),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("does not open this data partition"), "{body}");
    let (status, _, _) = gate_call(
        &app,
        gate_request(
            "POST",
            "/api/data/unlock",
            Some(serde_json::json!({ "recovery_code": "open sesame" })),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The right code gets past the check to cryptsetup's open, which needs the device
    // mapper this machine lacks (the QEMU suite opens it for real).
    let (status, _, body) = gate_call(
        &app,
        gate_request(
            "POST",
            "/api/data/unlock",
            Some(serde_json::json!({ "recovery_code": words.as_str(), "reseal": true })),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body.contains("did not open") && body.contains("cryptsetup open"),
        "{body}"
    );
    assert!(!body.contains(words.split_whitespace().next().unwrap()));

    // Five checks a minute from one address: the sixth is refused before it runs.
    for _ in 0..3 {
        gate_call(
            &app,
            gate_request(
                "POST",
                "/api/data/unlock",
                Some(serde_json::json!({ "recovery_code": wrong.as_str() })),
            ),
        )
        .await;
    }
    let (status, _, body) = gate_call(
        &app,
        gate_request(
            "POST",
            "/api/data/unlock",
            Some(serde_json::json!({ "recovery_code": words.as_str() })),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

/// Serves `connections` connections on `socket` as the image's `pk-data-enrol.socket`
/// does (systemd's Accept=yes): each runs `pk-appliance data enrol-recovery` with the
/// connection as its standard input, output and error.
fn enrol_service(
    socket: &Path,
    device: &Path,
    config: &Path,
    connections: usize,
) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let (device, config) = (device.to_owned(), config.to_owned());
    std::thread::spawn(move || {
        for _ in 0..connections {
            let (stream, _) = listener.accept().unwrap();
            let status = Command::new(env!("CARGO_BIN_EXE_pk-appliance"))
                .args(["data", "enrol-recovery", "--device"])
                .arg(&device)
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                    stream.try_clone().unwrap(),
                )))
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(
                    stream.try_clone().unwrap(),
                )))
                .stderr(Stdio::from(std::os::fd::OwnedFd::from(stream)))
                .status()
                .unwrap();
            let _ = status;
        }
    })
}

#[test]
fn setup_hands_the_recovery_code_to_the_enrolment_service_once() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let swtpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let device = device(dir.path(), "data.img");
    let volume = Volume::new(&device);
    volume
        .format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    let config = config(dir.path(), Some(&swtpm.tcti()));
    let socket = dir.path().join("enrol.sock");
    let service = enrol_service(&socket, &device, &config, 2);

    let words = RecoveryCode::generate().to_words();
    appliance::data::enrol_over(&socket, &words).unwrap();
    let opened = volume.unlock(&RecoveryProtector::new(
        RecoveryCode::parse(&words).unwrap(),
    ));
    assert!(opened.is_ok(), "{opened:?}");

    // A second code is refused: only setup adds one.
    let other = RecoveryCode::generate().to_words();
    let refused = appliance::data::enrol_over(&socket, &other).unwrap_err();
    assert!(refused.contains("added once"), "{refused}");
    assert!(
        volume
            .unlock(&RecoveryProtector::new(
                RecoveryCode::parse(&other).unwrap()
            ))
            .is_err()
    );
    service.join().unwrap();
}

/// A new volume sealed by a new swtpm, with that TPM's rollback counter.
fn counted_volume() -> (
    tempfile::TempDir,
    hsm::sim::Swtpm,
    PathBuf,
    Volume,
    hsm::DataKey,
    hsm::tpm::NvCounter,
) {
    use hsm::tpm::{NvCounter, PK_ROLLBACK_COUNTER_INDEX};
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let swtpm = hsm::sim::Swtpm::start(&dir.path().join("swtpm")).unwrap();
    let device = device(dir.path(), "data.img");
    let volume = Volume::new(&device);
    let passphrase = volume
        .format(Cipher::AesXts, Some((&tpm(&swtpm), "TPM")))
        .unwrap();
    let counter = NvCounter::open_or_define(&swtpm.tcti(), PK_ROLLBACK_COUNTER_INDEX).unwrap();
    (dir, swtpm, device, volume, passphrase, counter)
}

#[test]
fn an_older_copy_of_the_volume_is_refused_until_the_recovery_code_accepts_it() {
    let (_dir, _swtpm, device, volume, passphrase, counter) = counted_volume();

    // A new volume starts past the counter (a fresh volume's generation, 0, is behind
    // it: `data open` accepts a volume it has just made); then each open moves the
    // volume's generation and the TPM's counter on together.
    assert!(matches!(
        volume.check_generation(&passphrase, &counter),
        Err(DataError::RolledBack { generation: 0, .. })
    ));
    volume.accept_generation(&passphrase, &counter).unwrap();
    let first = volume.check_generation(&passphrase, &counter).unwrap();
    assert_eq!(counter.read().unwrap(), first);
    let copy = std::fs::read(&device).unwrap();
    let second = volume.check_generation(&passphrase, &counter).unwrap();
    assert_eq!(second, first + 1);
    assert_eq!(counter.read().unwrap(), second);

    // The older copy written back: refused, naming both numbers.
    std::fs::write(&device, &copy).unwrap();
    match volume.check_generation(&passphrase, &counter) {
        Err(DataError::RolledBack {
            generation,
            counter: count,
        }) => {
            assert_eq!((generation, count), (first, second));
        }
        other => panic!("an older copy was not refused: {other:?}"),
    }
    // Refusing moved nothing.
    assert_eq!(counter.read().unwrap(), second);
    assert_eq!(volume.generation(&passphrase).unwrap(), first);

    // Accepted (the admin gave the recovery code): both past the counter, and the next
    // open is an ordinary one again.
    let accepted = volume.accept_generation(&passphrase, &counter).unwrap();
    assert_eq!(accepted, second + 1);
    assert_eq!(
        volume.check_generation(&passphrase, &counter).unwrap(),
        accepted + 1
    );
}

#[test]
fn a_generation_raised_without_the_passphrase_is_refused() {
    let (_dir, _swtpm, device, volume, passphrase, counter) = counted_volume();
    let generation = volume.accept_generation(&passphrase, &counter).unwrap();

    // Someone with the disk edits the token's generation to catch up with the counter.
    let exported = Command::new("cryptsetup")
        .args(["token", "export", "--token-id", "0"])
        .arg(&device)
        .output()
        .unwrap();
    let mut token: serde_json::Value = serde_json::from_slice(&exported.stdout).unwrap();
    token["generation"]["value"] = serde_json::json!(generation + 100);
    let mut import = Command::new("cryptsetup")
        .args([
            "token",
            "import",
            "--token-id",
            "0",
            "--token-replace",
            "--json-file=-",
        ])
        .arg(&device)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(token.to_string().as_bytes())
        .unwrap();
    assert!(import.wait().unwrap().success());
    match volume.check_generation(&passphrase, &counter) {
        Err(DataError::Token { reason, .. }) => assert!(reason.contains("MAC"), "{reason}"),
        other => panic!("an edited generation was accepted: {other:?}"),
    }
}
