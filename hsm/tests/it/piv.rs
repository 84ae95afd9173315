//! The emulated PIV card (a YubiKey 5 lookalike) behind a private pcscd with the vpcd
//! reader, driven by a tool nobody here wrote (yubico-piv-tool) and by the `yubikey`
//! crate a YubiKey backend will use.
//!
//! pcscd's client socket is global, so these tests take [`PCSC`] for their whole run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hsm::sim::pcsc::Pcscd;
use hsm::sim::piv::{PivCard, RunningCard, TouchControl, TouchMode};
use libtest_mimic::{Failed, Trial};
use p256::PublicKey;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePublicKey;
use rand_core::OsRng;
use tempfile::TempDir;
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};

use crate::{TestResult, trial};

/// One pcscd on the machine at a time.
static PCSC: Mutex<()> = Mutex::new(());

const SERIAL: u32 = 31_415_926;
const PIN: &[u8] = b"123456";

pub(crate) fn trials(trials: &mut Vec<Trial>) {
    trials.extend([
        trial(
            "piv::yubico_piv_tool_generates_and_reads_status",
            yubico_piv_tool_generates_and_reads_status,
        ),
        trial(
            "piv::yubikey_crate_generates_and_derives",
            yubikey_crate_generates_and_derives,
        ),
        trial(
            "piv::wrong_pin_counts_down_then_blocks",
            wrong_pin_counts_down_then_blocks,
        ),
        trial("piv::denied_touch_fails_ecdh", denied_touch_fails_ecdh),
        trial(
            "piv::key_survives_replug_from_state_file",
            key_survives_replug_from_state_file,
        ),
        trial(
            "piv::ykcs11_generates_and_signs",
            ykcs11_generates_and_signs,
        ),
        trial(
            "yubikey::round_trip_touch_and_pin",
            backend_round_trip_touch_and_pin,
        ),
        trial(
            "yubikey::wrong_card_and_no_reader",
            backend_wrong_card_and_no_reader,
        ),
        // Real hardware only when named, as age-plugin-yubikey does; reported as ignored
        // otherwise. Run it alone: it uses the system's pcscd.
        trial("yubikey::real_yubikey", real_yubikey)
            .with_ignored_flag(std::env::var_os("PK_TEST_YUBIKEY_SERIAL").is_none()),
    ]);
}

/// pcscd with the vpcd reader and an emulated card in it, its state in a file.
struct Rig {
    card: Option<RunningCard>,
    pcscd: Pcscd,
    state: PathBuf,
    dir: TempDir,
    _lock: MutexGuard<'static, ()>,
}

impl Rig {
    fn start() -> Result<Rig, Failed> {
        let lock = PCSC.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = tempfile::tempdir()?;
        let pcscd = Pcscd::start(&dir.path().join("pcscd")).map_err(|e| e.to_string())?;
        let state = dir.path().join("card.json");
        let card = PivCard::create(&state, SERIAL)
            .and_then(|card| card.connect(pcscd.card_addr()))
            .map_err(|e| e.to_string())?;
        Ok(Rig {
            card: Some(card),
            pcscd,
            state,
            dir,
            _lock: lock,
        })
    }

    fn touch(&self) -> Result<TouchControl, Failed> {
        Ok(self.card.as_ref().ok_or("no card in the reader")?.touch())
    }

    /// Pulls the card out and plugs in a new emulator started from the state file.
    fn replug(&mut self) -> TestResult {
        if let Some(card) = self.card.take() {
            card.stop().map_err(|e| e.to_string())?;
        }
        // Let pcscd notice the removal before the "new" card arrives.
        std::thread::sleep(Duration::from_millis(500));
        let card = PivCard::load(&self.state)
            .and_then(|card| card.connect(self.pcscd.card_addr()))
            .map_err(|e| e.to_string())?;
        self.card = Some(card);
        Ok(())
    }

    /// Opens the card with the `yubikey` crate; right after pcscd starts or a card is
    /// plugged in, the reader can take a moment to show the card.
    fn open(&self) -> Result<YubiKey, Failed> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut wait = Duration::from_millis(50);
        loop {
            match YubiKey::open() {
                Ok(yubikey) => return Ok(yubikey),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "cannot open the emulated YubiKey: {e}; pcscd log: {}",
                        self.pcscd.log_text()
                    )
                    .into());
                }
                Err(_) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(800));
                }
            }
        }
    }

    /// Runs yubico-piv-tool against the emulated card.
    fn piv_tool(&self, args: &[&str]) -> Result<String, Failed> {
        hsm::sim::require_program("yubico-piv-tool", "yubico-piv-tool")
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = Command::new("yubico-piv-tool")
                .args(["-r", "Yubico"])
                .args(args)
                .current_dir(self.dir.path())
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return Ok(stdout + &stderr);
            }
            // "Failed to connect to yubikey": the reader may not show the card yet.
            let transient = stderr.contains("connect");
            if !transient || Instant::now() > deadline {
                return Err(format!("yubico-piv-tool {args:?} failed: {stdout}{stderr}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Generates a P-256 key in 9D with the default management key; returns its public key.
fn generate(
    yubikey: &mut YubiKey,
    pin: PinPolicy,
    touch: TouchPolicy,
) -> Result<PublicKey, Failed> {
    yubikey.authenticate(MgmKey::default())?;
    let spki = piv::generate(
        yubikey,
        SlotId::KeyManagement,
        AlgorithmId::EccP256,
        pin,
        touch,
    )?;
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key is not a whole number of bytes")?;
    Ok(PublicKey::from_sec1_bytes(point)?)
}

/// ECDH on the card with a fresh ephemeral key; returns (card's answer, expected secret).
fn ecdh(yubikey: &mut YubiKey, card_key: &PublicKey) -> yubikey::Result<(Vec<u8>, Vec<u8>)> {
    let ephemeral = p256::SecretKey::random(&mut OsRng);
    let point = ephemeral.public_key().to_encoded_point(false);
    let shared = piv::decrypt_data(
        yubikey,
        point.as_bytes(),
        AlgorithmId::EccP256,
        SlotId::KeyManagement,
    )?;
    let expected = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), card_key.as_affine());
    Ok((shared.to_vec(), expected.raw_secret_bytes().to_vec()))
}

fn yubico_piv_tool_generates_and_reads_status() -> TestResult {
    let rig = Rig::start()?;
    let public = rig.piv_tool(&["-a", "generate", "-s", "9d", "-A", "ECCP256"])?;
    assert!(public.contains("BEGIN PUBLIC KEY"), "{public}");
    let status = rig.piv_tool(&["-a", "status"])?;
    assert!(
        status.contains(&SERIAL.to_string()),
        "serial not shown: {status}"
    );
    assert!(status.contains("5.4.3"), "version not shown: {status}");
    // The key really is on the card: the crate sees it in the slot's metadata.
    let mut yubikey = rig.open()?;
    let metadata = piv::metadata(&mut yubikey, SlotId::KeyManagement)?;
    let spki = metadata.public.ok_or("no public key in the metadata")?;
    let point = spki.subject_public_key.as_bytes().ok_or("odd public key")?;
    assert_eq!(point.len(), 65);
    assert_eq!(point[0], 4, "not an uncompressed point");
    Ok(())
}

fn yubikey_crate_generates_and_derives() -> TestResult {
    let rig = Rig::start()?;
    let mut yubikey = rig.open()?;
    assert_eq!(yubikey.serial(), Serial(SERIAL));
    assert_eq!(yubikey.version().to_string(), "5.4.3");
    let card_key = generate(&mut yubikey, PinPolicy::Once, TouchPolicy::Always)?;
    let metadata = piv::metadata(&mut yubikey, SlotId::KeyManagement)?;
    assert_eq!(
        metadata.policy,
        Some((PinPolicy::Once, TouchPolicy::Always))
    );

    // Without the PIN the key refuses.
    assert!(
        ecdh(&mut yubikey, &card_key).is_err(),
        "ECDH without the PIN"
    );
    yubikey.verify_pin(PIN)?;
    let touches = rig.touch()?.requests();
    let (shared, expected) = ecdh(&mut yubikey, &card_key)?;
    assert_eq!(shared, expected, "shared secrets differ");
    assert_eq!(
        rig.touch()?.requests(),
        touches + 1,
        "no touch was asked for"
    );
    // PIN policy "once": a second derivation needs no new PIN, but a new touch.
    let (shared, expected) = ecdh(&mut yubikey, &card_key)?;
    assert_eq!(shared, expected);
    assert_eq!(rig.touch()?.requests(), touches + 2);
    Ok(())
}

fn wrong_pin_counts_down_then_blocks() -> TestResult {
    let rig = Rig::start()?;
    let mut yubikey = rig.open()?;
    assert_eq!(yubikey.get_pin_retries()?, 3);
    for left in [2u8, 1] {
        match yubikey.verify_pin(b"000000") {
            Err(yubikey::Error::WrongPin { tries }) => assert_eq!(tries, left),
            other => return Err(format!("unexpected: {other:?}").into()),
        }
        assert_eq!(yubikey.get_pin_retries()?, left);
    }
    match yubikey.verify_pin(b"000000") {
        Err(yubikey::Error::WrongPin { tries: 0 }) => {}
        other => return Err(format!("third wrong PIN: {other:?}").into()),
    }
    // Blocked: even the right PIN is refused now.
    match yubikey.verify_pin(PIN) {
        Err(yubikey::Error::WrongPin { tries: 0 }) => {}
        other => return Err(format!("right PIN on a blocked card: {other:?}").into()),
    }
    assert_eq!(yubikey.get_pin_retries()?, 0);
    Ok(())
}

fn denied_touch_fails_ecdh() -> TestResult {
    let rig = Rig::start()?;
    let mut yubikey = rig.open()?;
    let card_key = generate(&mut yubikey, PinPolicy::Once, TouchPolicy::Always)?;
    yubikey.verify_pin(PIN)?;
    let touch = rig.touch()?;

    touch.set_mode(TouchMode::Deny);
    match ecdh(&mut yubikey, &card_key) {
        Err(yubikey::Error::AuthenticationError) => {}
        other => return Err(format!("denied touch: {:?}", other.map(|_| ())).into()),
    }

    // Nobody touches: the card holds the answer until its timeout, then refuses.
    touch.set_mode(TouchMode::Never);
    touch.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    match ecdh(&mut yubikey, &card_key) {
        Err(yubikey::Error::AuthenticationError) => {}
        other => return Err(format!("no touch: {:?}", other.map(|_| ())).into()),
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "did not wait");

    touch.set_mode(TouchMode::Approve);
    let (shared, expected) = ecdh(&mut yubikey, &card_key)?;
    assert_eq!(shared, expected);
    Ok(())
}

fn key_survives_replug_from_state_file() -> TestResult {
    let mut rig = Rig::start()?;
    let card_key = {
        let mut yubikey = rig.open()?;
        let key = generate(&mut yubikey, PinPolicy::Once, TouchPolicy::Never)?;
        yubikey.verify_pin(PIN)?;
        let (shared, expected) = ecdh(&mut yubikey, &key)?;
        assert_eq!(shared, expected);
        key
    };
    rig.replug()?;
    let mut yubikey = rig.open()?;
    assert_eq!(yubikey.serial(), Serial(SERIAL));
    // A new session: the PIN is needed again, the key is the same.
    assert!(
        ecdh(&mut yubikey, &card_key).is_err(),
        "PIN survived the replug"
    );
    yubikey.verify_pin(PIN)?;
    let (shared, expected) = ecdh(&mut yubikey, &card_key)?;
    assert_eq!(shared, expected, "the key changed across the replug");
    Ok(())
}

/// Yubico's PKCS#11 module, driven by OpenSC's pkcs11-tool: key generation (which also
/// asks for an attestation and stores a certificate with chained PUT DATA) and signing.
fn ykcs11_generates_and_signs() -> TestResult {
    const MODULES: [&str; 3] = [
        "/usr/lib/x86_64-linux-gnu/libykcs11.so",
        "/usr/lib/aarch64-linux-gnu/libykcs11.so",
        "/usr/lib/libykcs11.so",
    ];
    let module = MODULES
        .iter()
        .find(|m| std::path::Path::new(m).is_file())
        .ok_or("libykcs11.so not found; install the Debian package `ykcs11`")?;
    hsm::sim::require_program("pkcs11-tool", "opensc").map_err(|e| e.to_string())?;
    let rig = Rig::start()?;
    let dir = rig.dir.path();
    let tool = |args: &[&str]| -> Result<String, Failed> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = Command::new("pkcs11-tool")
                .args(["--module", module])
                .args(args)
                .current_dir(dir)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                return Ok(text);
            }
            // Right after pcscd starts the token may not be there yet.
            if !text.contains("No slot") || Instant::now() > deadline {
                return Err(format!("pkcs11-tool {args:?} failed: {text}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // ykcs11's security officer is the management key; id 03 is slot 9D.
    let mgm_hex: String = hsm::sim::piv::DEFAULT_MGM_KEY
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let generated = tool(&[
        "--login",
        "--login-type",
        "so",
        "--so-pin",
        &mgm_hex,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "03",
    ])?;
    assert!(generated.contains("Key pair generated"), "{generated}");
    std::fs::write(dir.join("message"), b"signed by the emulated card")?;
    tool(&[
        "--login",
        "--pin",
        "123456",
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        "03",
        "-i",
        "message",
        "-o",
        "signature",
    ])?;
    tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        "03",
        "-o",
        "public.der",
    ])?;
    let public = PublicKey::from_public_key_der(&std::fs::read(dir.join("public.der"))?)?;
    let signature = Signature::from_slice(&std::fs::read(dir.join("signature"))?)?;
    VerifyingKey::from(&public).verify(b"signed by the emulated card", &signature)?;
    // ykcs11 stored the attestation as the slot's certificate (a chained PUT DATA of
    // more than 255 bytes), and reads it back from the card.
    let objects = tool(&["--list-objects"])?;
    assert!(
        objects.contains("X.509 Certificate for Key Management"),
        "{objects}"
    );
    Ok(())
}

/// The `yubikey` keyslot backend against the emulated card: PIN, touch (given, refused,
/// never given), the touch prompt as an event, retries and blocking.
fn backend_round_trip_touch_and_pin() -> TestResult {
    use hsm::yubikey::{YubiKeyEvent, YubiKeyProtector};
    use hsm::{DataKey, Pin, Protector as _, UnwrapError};
    use std::sync::Arc;

    let rig = Rig::start()?;
    drop(rig.open()?); // wait until pcscd shows the card
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let good = YubiKeyProtector::new(Some(SERIAL), Some(Pin::new(PIN.to_vec()))).with_events(
        Arc::new(move |e| sink.lock().unwrap_or_else(PoisonError::into_inner).push(e)),
    );
    let key = DataKey::generate();
    let sealed = good.wrap(&key, b"aad")?;
    let json = serde_json::to_string(&sealed)?;
    assert!(json.contains("\"kind\":\"yubikey\""), "{json}");

    // PIN and touch: the key comes back, and the touch was announced first.
    assert_eq!(good.unwrap(&sealed, b"aad")?.expose(), key.expose());
    assert_eq!(
        events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first(),
        Some(&YubiKeyEvent::TouchNeeded { serial: SERIAL })
    );
    assert!(good.unwrap(&sealed, b"other aad").is_err());

    // Refused touch, and a touch that never comes.
    let touch = rig.touch()?;
    touch.set_mode(TouchMode::Deny);
    match good.unwrap(&sealed, b"aad") {
        Err(UnwrapError::TouchDenied) => {}
        other => return Err(format!("expected TouchDenied, got {:?}", other.map(|_| ())).into()),
    }
    touch.set_mode(TouchMode::Never);
    touch.set_timeout(Duration::from_secs(6));
    match good.unwrap(&sealed, b"aad") {
        Err(UnwrapError::TouchTimeout) => {}
        other => return Err(format!("expected TouchTimeout, got {:?}", other.map(|_| ())).into()),
    }
    touch.set_mode(TouchMode::Approve);

    // No PIN given; wrong PINs count down and block; then even the right one fails.
    let no_pin = YubiKeyProtector::new(Some(SERIAL), None);
    assert!(matches!(
        no_pin.unwrap(&sealed, b"aad"),
        Err(UnwrapError::PinRequired)
    ));
    let wrong = YubiKeyProtector::new(Some(SERIAL), Some(Pin::from("000000")));
    match wrong.unwrap(&sealed, b"aad") {
        Err(UnwrapError::WrongPin {
            retries_left: Some(2),
        }) => {}
        other => {
            return Err(format!("expected 2 retries left, got {:?}", other.map(|_| ())).into());
        }
    }
    assert!(matches!(
        wrong.unwrap(&sealed, b"aad"),
        Err(UnwrapError::WrongPin {
            retries_left: Some(1)
        })
    ));
    assert!(matches!(
        wrong.unwrap(&sealed, b"aad"),
        Err(UnwrapError::PinBlocked)
    ));
    assert!(matches!(
        good.unwrap(&sealed, b"aad"),
        Err(UnwrapError::PinBlocked)
    ));
    Ok(())
}

/// The enrolled card missing: another card in the reader, then no reader at all.
fn backend_wrong_card_and_no_reader() -> TestResult {
    use hsm::yubikey::YubiKeyProtector;
    use hsm::{DataKey, Pin, Protector as _, UnwrapError};

    let mut rig = Rig::start()?;
    drop(rig.open()?);
    let protector = YubiKeyProtector::new(None, Some(Pin::new(PIN.to_vec())));
    let sealed = protector.wrap(&DataKey::generate(), b"aad")?;
    // Another YubiKey (another serial) in the reader.
    if let Some(card) = rig.card.take() {
        card.stop().map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(500));
    rig.card = Some(
        PivCard::create(&rig.dir.path().join("other.json"), SERIAL + 1)
            .and_then(|card| card.connect(rig.pcscd.card_addr()))
            .map_err(|e| e.to_string())?,
    );
    drop(rig.open()?);
    match protector.unwrap(&sealed, b"aad") {
        Err(UnwrapError::WrongCard { expected_serial }) => assert_eq!(expected_serial, SERIAL),
        other => return Err(format!("expected WrongCard, got {:?}", other.map(|_| ())).into()),
    }
    // No pcscd, no reader.
    drop(rig);
    match protector.unwrap(&sealed, b"aad") {
        Err(UnwrapError::NoReader) => Ok(()),
        other => Err(format!("expected NoReader, got {:?}", other.map(|_| ())).into()),
    }
}

/// Against a real YubiKey named by `PK_TEST_YUBIKEY_SERIAL` (PIN from
/// `PK_TEST_YUBIKEY_PIN`, default `123456`): generates a key in retired slot 95 with the
/// factory management key, wraps and unwraps (touch the key when asked).
fn real_yubikey() -> TestResult {
    use hsm::yubikey::{PinRule, TouchRule, YubiKeyProtector};
    use hsm::{DataKey, Pin, Protector as _};

    let serial: u32 = std::env::var("PK_TEST_YUBIKEY_SERIAL")?.parse()?;
    let pin = std::env::var("PK_TEST_YUBIKEY_PIN").unwrap_or_else(|_| "123456".into());
    let protector = YubiKeyProtector::new(Some(serial), Some(Pin::from(pin.as_str())))
        .with_key(0x95, PinRule::Once, TouchRule::Always)
        .with_events(std::sync::Arc::new(|event| {
            eprintln!("{event:?}: touch the YubiKey")
        }));
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, b"aad")?;
    assert_eq!(protector.unwrap(&sealed, b"aad")?.expose(), key.expose());
    Ok(())
}
