//! A software PIV smart card that behaves like a YubiKey 5 (firmware 5.4.3), for tests.
//!
//! The card plugs into the real PC/SC stack through vsmartcard's `vpcd` reader driver:
//! pcscd loads `libifdvpcd.so` (see [`super::pcsc::Pcscd`]), which listens on a loopback
//! TCP port, and [`PivCard::connect`] connects to it as the card. From then on every
//! PC/SC client of the machine (the `yubikey` crate, `yubico-piv-tool`, ykcs11, OpenSC)
//! sees a YubiKey in a reader named "Yubico YubiKey Virtual".
//!
//! What is emulated: the PIV application (SELECT, VERIFY, CHANGE REFERENCE, RESET RETRY,
//! GENERAL AUTHENTICATE for the 3DES management key and for P-256 ECDH and ECDSA,
//! GENERATE ASYMMETRIC for P-256, GET DATA and PUT DATA with command chaining, GET
//! RESPONSE for long answers) and the YubiKey extensions GET VERSION, GET SERIAL, GET
//! METADATA and ATTEST (a certificate signed by the slot key itself, not by an
//! attestation key). RSA, P-384, key import, PIN retry configuration and the other
//! applications of a YubiKey (OTP, FIDO, OpenPGP, management) are not.
//!
//! The card's state (serial, PIN, PUK, management key, keys, data objects) can be kept in
//! a JSON file, rewritten after every change, so that stopping the card and starting a
//! new one from the same file is a "replug" of the same token. The file holds the private
//! keys and PINs in the clear: this is a test fixture, never a place for real secrets.
//! Nothing here prints a key or a PIN.
//!
//! Touch (the YubiKey's metal contact) is driven by the test through [`TouchControl`].
//! A missing touch is answered like a real YubiKey whose touch timed out: status word
//! `69 82` (security status not satisfied), which the `yubikey` crate reports as
//! `Error::AuthenticationError`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use des::TdesEde3;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{SimError, io_err};

/// The answer to reset of a YubiKey 5 (CCID interface).
pub(crate) const YUBIKEY5_ATR: [u8; 23] = [
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

/// The default PIN of a new YubiKey.
pub const DEFAULT_PIN: &str = "123456";
/// The default PUK of a new YubiKey.
pub(crate) const DEFAULT_PUK: &str = "12345678";
/// The default 3DES management key of a new YubiKey (before firmware 5.7).
pub const DEFAULT_MGM_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// The firmware version the card reports.
pub(crate) const FIRMWARE: [u8; 3] = [5, 4, 3];
/// PIN and PUK tries of a new card.
const DEFAULT_TRIES: u8 = 3;
/// How long a touch stays valid for keys with the "cached" touch policy.
const TOUCH_CACHE: Duration = Duration::from_secs(15);
/// The PIV application identifier (prefix; clients send it with or without the version).
const PIV_AID: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// The algorithm byte of ECC P-256.
const ALG_P256: u8 = 0x11;
/// The algorithm byte of 3DES (the management key).
const ALG_3DES: u8 = 0x03;
/// The management key reference.
const KEY_MGM: u8 = 0x9B;

// Status words.
const SW_OK: u16 = 0x9000;
const SW_WRONG_LENGTH: u16 = 0x6700;
const SW_SECURITY: u16 = 0x6982;
const SW_BLOCKED: u16 = 0x6983;
const SW_CONDITIONS: u16 = 0x6985;
const SW_WRONG_DATA: u16 = 0x6A80;
const SW_NOT_FOUND: u16 = 0x6A82;
const SW_WRONG_P1P2: u16 = 0x6A86;
const SW_INS_UNSUPPORTED: u16 = 0x6D00;
const SW_CLA_UNSUPPORTED: u16 = 0x6E00;
const SW_UNKNOWN: u16 = 0x6F00;

/// The slots that can hold a key: authentication, signature, key management, card
/// authentication, the twenty retired key-management slots, and attestation.
fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95 | 0xF9)
}

/// The PIN policy byte (`0xAA` tag) of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PinPolicy {
    /// Never ask for the PIN.
    Never,
    /// The PIN once per session.
    Once,
    /// The PIN right before every use.
    Always,
}

impl PinPolicy {
    fn from_byte(byte: u8, slot: u8) -> Option<PinPolicy> {
        match byte {
            0 if slot == 0x9C => Some(PinPolicy::Always),
            0 if slot == 0x9E => Some(PinPolicy::Never),
            0 => Some(PinPolicy::Once),
            1 => Some(PinPolicy::Never),
            2 => Some(PinPolicy::Once),
            3 => Some(PinPolicy::Always),
            _ => None,
        }
    }

    fn byte(self) -> u8 {
        match self {
            PinPolicy::Never => 1,
            PinPolicy::Once => 2,
            PinPolicy::Always => 3,
        }
    }
}

/// The touch policy byte (`0xAB` tag) of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TouchPolicy {
    /// No touch.
    Never,
    /// A touch for every use.
    Always,
    /// A touch, then none for 15 seconds.
    Cached,
}

impl TouchPolicy {
    fn from_byte(byte: u8) -> Option<TouchPolicy> {
        match byte {
            0 | 1 => Some(TouchPolicy::Never),
            2 => Some(TouchPolicy::Always),
            3 => Some(TouchPolicy::Cached),
            _ => None,
        }
    }

    fn byte(self) -> u8 {
        match self {
            TouchPolicy::Never => 1,
            TouchPolicy::Always => 2,
            TouchPolicy::Cached => 3,
        }
    }
}

/// A P-256 key in a slot.
#[derive(Clone, Serialize, Deserialize)]
struct SlotKey {
    /// The private scalar, big-endian.
    secret: Vec<u8>,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
}

impl SlotKey {
    fn secret_key(&self) -> Option<SecretKey> {
        SecretKey::from_slice(&self.secret).ok()
    }

    fn public_point(&self) -> Option<Vec<u8>> {
        let point = self.secret_key()?.public_key().to_encoded_point(false);
        Some(point.as_bytes().to_vec())
    }
}

/// Everything a card keeps across power cycles (and, with a file, across "replugs").
#[derive(Clone, Serialize, Deserialize)]
struct CardState {
    serial: u32,
    version: [u8; 3],
    pin: Vec<u8>,
    pin_tries: u8,
    pin_tries_left: u8,
    puk: Vec<u8>,
    puk_tries: u8,
    puk_tries_left: u8,
    mgm_key: [u8; 24],
    /// Keys by slot number.
    keys: BTreeMap<u8, SlotKey>,
    /// Data objects by tag (3-byte `5FC1xx` tags and the like), value without the `53`.
    objects: BTreeMap<u32, Vec<u8>>,
}

/// What a card forgets on reset: the PIV session.
#[derive(Default)]
struct Session {
    pin_verified: bool,
    /// The PIN was verified and no key with the "always" PIN policy used it since.
    pin_fresh: bool,
    mgm_authenticated: bool,
    /// The witness the card sent, waiting for the client to decrypt it.
    witness: Option<[u8; 8]>,
    /// Data of a chained command so far (CLA bit 0x10), with its INS.
    chain: Option<(u8, Vec<u8>)>,
    /// Response data not yet fetched with GET RESPONSE.
    pending: Vec<u8>,
    last_touch: Option<Instant>,
}

/// What the emulated user does when the card blinks for a touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchMode {
    /// Touches at once.
    Approve,
    /// Refuses at once: the card answers as if its touch timeout had passed.
    Deny,
    /// Never touches: the card holds the answer for [`TouchControl::set_timeout`], then
    /// answers as a touch timeout (status word `69 82`).
    Never,
}

/// The test's hand on the card: what to do on a touch request, and how often one came.
#[derive(Clone)]
pub struct TouchControl {
    inner: Arc<TouchInner>,
}

struct TouchInner {
    mode: Mutex<(TouchMode, Duration)>,
    requests: AtomicU32,
}

impl TouchControl {
    fn new() -> TouchControl {
        TouchControl {
            inner: Arc::new(TouchInner {
                mode: Mutex::new((TouchMode::Approve, Duration::from_secs(15))),
                requests: AtomicU32::new(0),
            }),
        }
    }

    /// Sets what happens on the next touch requests.
    pub fn set_mode(&self, mode: TouchMode) {
        self.lock().0 = mode;
    }

    /// How long [`TouchMode::Never`] holds the answer (a real YubiKey waits 15 s).
    pub fn set_timeout(&self, timeout: Duration) {
        self.lock().1 = timeout;
    }

    /// How many times the card asked for a touch so far.
    pub fn requests(&self) -> u32 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (TouchMode, Duration)> {
        self.inner
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for a touch; `true` if the user touched. Waits (in `Never` mode) until the
    /// timeout or until `stop` is set.
    fn touch(&self, stop: &AtomicBool) -> bool {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        let (mode, timeout) = *self.lock();
        match mode {
            TouchMode::Approve => true,
            TouchMode::Deny => false,
            TouchMode::Never => {
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                false
            }
        }
    }
}

/// An emulated PIV card (YubiKey 5): its state, and where that state is kept.
pub struct PivCard {
    state: CardState,
    path: Option<PathBuf>,
    session: Session,
    touch: TouchControl,
}

impl fmt::Debug for PivCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PivCard")
            .field("serial", &self.state.serial)
            .field("slots", &self.state.keys.keys().collect::<Vec<_>>())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PivCard {
    /// A new card as it leaves the factory (default PIN, PUK and management key, no
    /// keys), kept in memory only.
    pub fn new(serial: u32) -> PivCard {
        PivCard {
            state: CardState {
                serial,
                version: FIRMWARE,
                pin: DEFAULT_PIN.as_bytes().to_vec(),
                pin_tries: DEFAULT_TRIES,
                pin_tries_left: DEFAULT_TRIES,
                puk: DEFAULT_PUK.as_bytes().to_vec(),
                puk_tries: DEFAULT_TRIES,
                puk_tries_left: DEFAULT_TRIES,
                mgm_key: DEFAULT_MGM_KEY,
                keys: BTreeMap::new(),
                objects: BTreeMap::new(),
            },
            path: None,
            session: Session::default(),
            touch: TouchControl::new(),
        }
    }

    /// A new factory-fresh card whose state is written to `path` (now and after every
    /// change).
    pub fn create(path: &Path, serial: u32) -> Result<PivCard, SimError> {
        let mut card = PivCard::new(serial);
        card.path = Some(path.to_owned());
        card.save()
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(card)
    }

    /// The card whose state was kept in `path`: the same keys, PIN and counters.
    pub fn load(path: &Path) -> Result<PivCard, SimError> {
        let text = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        let state: CardState = serde_json::from_slice(&text)
            .map_err(|e| SimError::Start(format!("{} is not a card state: {e}", path.display())))?;
        Ok(PivCard {
            state,
            path: Some(path.to_owned()),
            session: Session::default(),
            touch: TouchControl::new(),
        })
    }

    /// The handle that decides what the emulated user does on touch requests.
    pub fn touch(&self) -> TouchControl {
        self.touch.clone()
    }

    /// Connects to vpcd at `addr` (retrying for up to 10 s while the reader driver comes
    /// up) and serves APDUs on a thread until the returned handle is stopped or dropped.
    pub fn connect(self, addr: SocketAddr) -> Result<RunningCard, SimError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => {
                    return Err(SimError::Start(format!(
                        "cannot connect to vpcd at {addr} (is pcscd running with the vpcd reader?): {e}"
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let _ = stream.set_nodelay(true);
        let control = stream
            .try_clone()
            .map_err(io_err("cloning the vpcd connection"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let touch = self.touch.clone();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("piv-card-{}", self.state.serial))
            .spawn(move || serve(self, stream, &thread_stop))
            .map_err(io_err("starting the card thread"))?;
        Ok(RunningCard {
            stream: control,
            stop,
            thread: Some(thread),
            touch,
        })
    }

    fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_vec_pretty(&self.state).map_err(io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    fn reset_session(&mut self) {
        self.session = Session {
            last_touch: self.session.last_touch,
            ..Session::default()
        };
    }

    /// Answers one vpcd message as the card thread does: a one-byte control code (power
    /// off, power on, reset: no answer; get ATR: the ATR), or a command APDU (response data
    /// followed by SW1 SW2). `stop` ends a wait for a touch early. Public for the fuzz
    /// target `piv_apdu` in `fuzz/`, which feeds the card messages without a reader.
    #[doc(hidden)]
    pub fn handle_message(&mut self, msg: &[u8], stop: &AtomicBool) -> Option<Vec<u8>> {
        match msg {
            [0] | [1] | [2] => {
                self.reset_session();
                None
            }
            [4] => Some(YUBIKEY5_ATR.to_vec()),
            [_] => None,
            apdu => Some(self.process(apdu, stop)),
        }
    }

    /// Handles one command APDU; returns response data followed by SW1 SW2.
    fn process(&mut self, apdu: &[u8], stop: &AtomicBool) -> Vec<u8> {
        let Some(cmd) = Command::parse(apdu) else {
            return sw_only(SW_WRONG_LENGTH);
        };
        if cmd.cla & !0x10 != 0 {
            return sw_only(SW_CLA_UNSUPPORTED);
        }
        if cmd.ins != 0xC0 {
            self.session.pending.clear();
        }
        // Command chaining: collect the data, answer 9000 until the last part.
        let mut data = cmd.data.to_vec();
        if let Some((ins, mut head)) = self.session.chain.take()
            && ins == cmd.ins
        {
            head.extend_from_slice(&data);
            data = head;
        }
        if cmd.cla & 0x10 != 0 {
            self.session.chain = Some((cmd.ins, data));
            return sw_only(SW_OK);
        }
        let (out, sw) = match cmd.ins {
            0xA4 => self.select(cmd.p1, &data),
            0xC0 => return self.get_response(),
            0xFD => (self.state.version.to_vec(), SW_OK),
            0xF8 => (self.state.serial.to_be_bytes().to_vec(), SW_OK),
            0x20 => self.verify(cmd.p1, cmd.p2, &data),
            0x24 => self.change_reference(cmd.p2, &data),
            0x2C => self.reset_retry(cmd.p2, &data),
            0x87 => self.general_authenticate(cmd.p1, cmd.p2, &data, stop),
            0x47 => self.generate(cmd.p2, &data),
            0xF7 => self.metadata(cmd.p2),
            0xCB => self.get_data(&data),
            0xDB => self.put_data(&data),
            0xF9 => self.attest(cmd.p1),
            _ => (Vec::new(), SW_INS_UNSUPPORTED),
        };
        self.respond(out, sw)
    }

    /// Sends at most 256 bytes; the rest waits for GET RESPONSE (`61 xx`).
    fn respond(&mut self, mut out: Vec<u8>, sw: u16) -> Vec<u8> {
        if out.len() > 256 {
            let rest = out.split_off(256);
            let left = u8::try_from(rest.len()).unwrap_or(0);
            self.session.pending = rest;
            out.extend_from_slice(&[0x61, left]);
            return out;
        }
        out.extend_from_slice(&sw.to_be_bytes());
        out
    }

    fn get_response(&mut self) -> Vec<u8> {
        if self.session.pending.is_empty() {
            return sw_only(SW_CONDITIONS);
        }
        let out = std::mem::take(&mut self.session.pending);
        self.respond(out, SW_OK)
    }

    fn select(&mut self, p1: u8, aid: &[u8]) -> (Vec<u8>, u16) {
        if p1 != 0x04 || aid.len() < PIV_AID.len() || aid[..PIV_AID.len()] != PIV_AID {
            return (Vec::new(), SW_NOT_FOUND);
        }
        self.session.pin_verified = false;
        self.session.pin_fresh = false;
        self.session.mgm_authenticated = false;
        self.session.witness = None;
        // Application property template, as a YubiKey 5 returns it.
        let apt = [
            0x61, 0x11, 0x4F, 0x06, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x79, 0x07, 0x4F, 0x05,
            0xA0, 0x00, 0x00, 0x03, 0x08,
        ];
        (apt.to_vec(), SW_OK)
    }

    fn verify(&mut self, p1: u8, p2: u8, data: &[u8]) -> (Vec<u8>, u16) {
        if p2 != 0x80 {
            return (Vec::new(), SW_WRONG_P1P2);
        }
        if p1 == 0xFF {
            self.session.pin_verified = false;
            self.session.pin_fresh = false;
            return (Vec::new(), SW_OK);
        }
        if self.state.pin_tries_left == 0 {
            return (Vec::new(), SW_BLOCKED);
        }
        if data.is_empty() {
            let sw = if self.session.pin_verified {
                SW_OK
            } else {
                0x63C0 | u16::from(self.state.pin_tries_left)
            };
            return (Vec::new(), sw);
        }
        if data.len() != 8 {
            return (Vec::new(), SW_WRONG_DATA);
        }
        if unpad(data) == self.state.pin.as_slice() {
            self.state.pin_tries_left = self.state.pin_tries;
            self.session.pin_verified = true;
            self.session.pin_fresh = true;
            (Vec::new(), self.persist(SW_OK))
        } else {
            self.session.pin_verified = false;
            self.session.pin_fresh = false;
            self.state.pin_tries_left -= 1;
            let sw = if self.state.pin_tries_left == 0 {
                SW_BLOCKED
            } else {
                0x63C0 | u16::from(self.state.pin_tries_left)
            };
            (Vec::new(), self.persist(sw))
        }
    }

    /// CHANGE REFERENCE DATA: old and new PIN (P2 80) or PUK (P2 81), 8 bytes each.
    fn change_reference(&mut self, p2: u8, data: &[u8]) -> (Vec<u8>, u16) {
        if data.len() != 16 {
            return (Vec::new(), SW_WRONG_DATA);
        }
        let (old, new) = (unpad(&data[..8]).to_vec(), unpad(&data[8..]).to_vec());
        let state = &mut self.state;
        let (secret, left, tries) = match p2 {
            0x80 => (&mut state.pin, &mut state.pin_tries_left, state.pin_tries),
            0x81 => (&mut state.puk, &mut state.puk_tries_left, state.puk_tries),
            _ => return (Vec::new(), SW_WRONG_P1P2),
        };
        if *left == 0 {
            return (Vec::new(), SW_BLOCKED);
        }
        if old != *secret {
            *left -= 1;
            let sw = if *left == 0 {
                SW_BLOCKED
            } else {
                0x63C0 | u16::from(*left)
            };
            return (Vec::new(), self.persist(sw));
        }
        if new.len() < 6 {
            return (Vec::new(), SW_WRONG_DATA);
        }
        *secret = new;
        *left = tries;
        (Vec::new(), self.persist(SW_OK))
    }

    /// RESET RETRY COUNTER: PUK and new PIN, 8 bytes each.
    fn reset_retry(&mut self, p2: u8, data: &[u8]) -> (Vec<u8>, u16) {
        if p2 != 0x80 {
            return (Vec::new(), SW_WRONG_P1P2);
        }
        if data.len() != 16 {
            return (Vec::new(), SW_WRONG_DATA);
        }
        if self.state.puk_tries_left == 0 {
            return (Vec::new(), SW_BLOCKED);
        }
        if unpad(&data[..8]) != self.state.puk.as_slice() {
            self.state.puk_tries_left -= 1;
            let sw = if self.state.puk_tries_left == 0 {
                SW_BLOCKED
            } else {
                0x63C0 | u16::from(self.state.puk_tries_left)
            };
            return (Vec::new(), self.persist(sw));
        }
        let new = unpad(&data[8..]).to_vec();
        if new.len() < 6 {
            return (Vec::new(), SW_WRONG_DATA);
        }
        self.state.pin = new;
        self.state.pin_tries_left = self.state.pin_tries;
        self.state.puk_tries_left = self.state.puk_tries;
        (Vec::new(), self.persist(SW_OK))
    }

    /// Writes the state file; turns a write failure into `6F 00`.
    fn persist(&self, sw: u16) -> u16 {
        match self.save() {
            Ok(()) => sw,
            Err(_) => SW_UNKNOWN,
        }
    }

    fn general_authenticate(
        &mut self,
        alg: u8,
        key: u8,
        data: &[u8],
        stop: &AtomicBool,
    ) -> (Vec<u8>, u16) {
        let Some((0x7C, template, _)) = tlv(data) else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        let mut items = BTreeMap::new();
        let mut rest = template;
        while !rest.is_empty() {
            let Some((tag, value, next)) = tlv(rest) else {
                return (Vec::new(), SW_WRONG_DATA);
            };
            items.insert(tag, value);
            rest = next;
        }
        if key == KEY_MGM {
            if alg != ALG_3DES && alg != 0x00 {
                return (Vec::new(), SW_WRONG_P1P2);
            }
            return self.mgm_authenticate(&items);
        }
        if alg != ALG_P256 {
            return (Vec::new(), SW_WRONG_P1P2);
        }
        let Some(slot) = self.state.keys.get(&key).cloned() else {
            return (Vec::new(), SW_NOT_FOUND);
        };
        if !items.contains_key(&0x82) {
            return (Vec::new(), SW_WRONG_DATA);
        }
        let input = if let Some(point) = items.get(&0x85) {
            Op::Ecdh(point)
        } else if let Some(digest) = items.get(&0x81) {
            Op::Sign(digest)
        } else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        if !self.policies_met(&slot, stop) {
            return (Vec::new(), SW_SECURITY);
        }
        let Some(secret) = slot.secret_key() else {
            return (Vec::new(), SW_UNKNOWN);
        };
        match key_operation(&secret, input) {
            Ok(result) => (ber(0x7C, &ber(0x82, &result)), SW_OK),
            Err(sw) => (Vec::new(), sw),
        }
    }

    /// Whether the slot's PIN policy (a PIN verified in this session, or just before for
    /// `Always`) and touch policy (a touch now, or within the cache time for `Cached`)
    /// allow a use of its key; an `Always` PIN is spent by the check.
    fn policies_met(&mut self, slot: &SlotKey, stop: &AtomicBool) -> bool {
        match slot.pin_policy {
            PinPolicy::Never => {}
            PinPolicy::Once if self.session.pin_verified => {}
            PinPolicy::Always if self.session.pin_fresh => {}
            _ => return false,
        }
        if slot.pin_policy == PinPolicy::Always {
            self.session.pin_fresh = false;
        }
        match slot.touch_policy {
            TouchPolicy::Never => true,
            TouchPolicy::Cached
                if self
                    .session
                    .last_touch
                    .is_some_and(|t| t.elapsed() < TOUCH_CACHE) =>
            {
                true
            }
            TouchPolicy::Always | TouchPolicy::Cached => {
                let touched = self.touch.touch(stop);
                if touched {
                    self.session.last_touch = Some(Instant::now());
                }
                touched
            }
        }
    }

    /// Management key mutual authentication, as the `yubikey` crate and yubico-piv-tool
    /// do it: the client asks for a witness (`80 00`), the card sends it 3DES-encrypted,
    /// the client returns it decrypted (`80 08`) with its own challenge (`81 08`), and the
    /// card answers the challenge encrypted (`82 08`).
    fn mgm_authenticate(&mut self, items: &BTreeMap<u32, &[u8]>) -> (Vec<u8>, u16) {
        let cipher = TdesEde3::new(GenericArray::from_slice(&self.state.mgm_key));
        match (items.get(&0x80), items.get(&0x81)) {
            (Some([]), None) => {
                let mut witness = [0u8; 8];
                OsRng.fill_bytes(&mut witness);
                self.session.witness = Some(witness);
                self.session.mgm_authenticated = false;
                let mut block = witness;
                cipher.encrypt_block(GenericArray::from_mut_slice(&mut block));
                (ber(0x7C, &ber(0x80, &block)), SW_OK)
            }
            (Some(w), Some(challenge)) if w.len() == 8 && challenge.len() == 8 => {
                let Some(expected) = self.session.witness.take() else {
                    return (Vec::new(), SW_CONDITIONS);
                };
                if **w != expected {
                    return (Vec::new(), SW_SECURITY);
                }
                self.session.mgm_authenticated = true;
                let mut block = [0u8; 8];
                block.copy_from_slice(challenge);
                cipher.encrypt_block(GenericArray::from_mut_slice(&mut block));
                (ber(0x7C, &ber(0x82, &block)), SW_OK)
            }
            // Single authentication: the client asks for a challenge and encrypts it.
            (None, Some([])) => {
                let mut challenge = [0u8; 8];
                OsRng.fill_bytes(&mut challenge);
                self.session.witness = Some(challenge);
                (ber(0x7C, &ber(0x81, &challenge)), SW_OK)
            }
            (None, None) => match items.get(&0x82) {
                Some(r) if r.len() == 8 => {
                    let Some(challenge) = self.session.witness.take() else {
                        return (Vec::new(), SW_CONDITIONS);
                    };
                    let mut block = [0u8; 8];
                    block.copy_from_slice(r);
                    cipher.decrypt_block(GenericArray::from_mut_slice(&mut block));
                    if block != challenge {
                        return (Vec::new(), SW_SECURITY);
                    }
                    self.session.mgm_authenticated = true;
                    (Vec::new(), SW_OK)
                }
                _ => (Vec::new(), SW_WRONG_DATA),
            },
            _ => (Vec::new(), SW_WRONG_DATA),
        }
    }

    /// GENERATE ASYMMETRIC KEY PAIR: `AC { 80 alg, [AA pin policy], [AB touch policy] }`.
    fn generate(&mut self, slot: u8, data: &[u8]) -> (Vec<u8>, u16) {
        if !self.session.mgm_authenticated {
            return (Vec::new(), SW_SECURITY);
        }
        if !is_key_slot(slot) || slot == 0xF9 {
            return (Vec::new(), SW_NOT_FOUND);
        }
        let Some((0xAC, template, _)) = tlv(data) else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        let (mut alg, mut pin, mut touch) = (None, 0, 0);
        let mut rest = template;
        while !rest.is_empty() {
            let Some((tag, value, next)) = tlv(rest) else {
                return (Vec::new(), SW_WRONG_DATA);
            };
            match (tag, value) {
                (0x80, [a]) => alg = Some(*a),
                (0xAA, [p]) => pin = *p,
                (0xAB, [t]) => touch = *t,
                _ => return (Vec::new(), SW_WRONG_DATA),
            }
            rest = next;
        }
        if alg != Some(ALG_P256) {
            return (Vec::new(), SW_WRONG_DATA);
        }
        let (Some(pin_policy), Some(touch_policy)) = (
            PinPolicy::from_byte(pin, slot),
            TouchPolicy::from_byte(touch),
        ) else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        let secret = SecretKey::random(&mut OsRng);
        let key = SlotKey {
            secret: secret.to_bytes().to_vec(),
            pin_policy,
            touch_policy,
        };
        let Some(point) = key.public_point() else {
            return (Vec::new(), SW_UNKNOWN);
        };
        self.state.keys.insert(slot, key);
        let sw = self.persist(SW_OK);
        (ber(0x7F49, &ber(0x86, &point)), sw)
    }

    /// GET METADATA (YubiKey 5.3 and later) for the PIN, PUK, management key and keys.
    fn metadata(&self, slot: u8) -> (Vec<u8>, u16) {
        let mut out = Vec::new();
        match slot {
            0x80 | 0x81 => {
                let (secret, default, tries, left) = if slot == 0x80 {
                    let s = &self.state;
                    (&s.pin, DEFAULT_PIN, s.pin_tries, s.pin_tries_left)
                } else {
                    let s = &self.state;
                    (&s.puk, DEFAULT_PUK, s.puk_tries, s.puk_tries_left)
                };
                out.extend(ber(0x01, &[0xFF]));
                out.extend(ber(0x05, &[u8::from(secret == default.as_bytes())]));
                out.extend(ber(0x06, &[tries, left]));
            }
            KEY_MGM => {
                out.extend(ber(0x01, &[ALG_3DES]));
                out.extend(ber(0x02, &[0x00, 0x01]));
                out.extend(ber(
                    0x05,
                    &[u8::from(self.state.mgm_key == DEFAULT_MGM_KEY)],
                ));
            }
            _ => {
                let Some(key) = self.state.keys.get(&slot) else {
                    return (Vec::new(), SW_NOT_FOUND);
                };
                let Some(point) = key.public_point() else {
                    return (Vec::new(), SW_UNKNOWN);
                };
                out.extend(ber(0x01, &[ALG_P256]));
                out.extend(ber(0x02, &[key.pin_policy.byte(), key.touch_policy.byte()]));
                out.extend(ber(0x03, &[0x01])); // generated on the card
                out.extend(ber(0x04, &ber(0x86, &point)));
            }
        }
        (out, SW_OK)
    }

    /// GET DATA: `5C { tag }`, answered `53 { value }` (the discovery object as itself).
    fn get_data(&self, data: &[u8]) -> (Vec<u8>, u16) {
        let Some((0x5C, tag_bytes, _)) = tlv(data) else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        let tag = tag_bytes
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        if tag == 0x7E {
            // Discovery object: the PIV AID, PIN usage policy "PIV PIN only".
            let discovery = [
                0x7E, 0x12, 0x4F, 0x0B, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01,
                0x00, 0x5F, 0x2F, 0x02, 0x40, 0x00,
            ];
            return (discovery.to_vec(), SW_OK);
        }
        match self.state.objects.get(&tag) {
            Some(value) => (ber(0x53, value), SW_OK),
            None => (Vec::new(), SW_NOT_FOUND),
        }
    }

    /// PUT DATA: `5C { tag } 53 { value }`; needs the management key. An empty value
    /// deletes the object.
    fn put_data(&mut self, data: &[u8]) -> (Vec<u8>, u16) {
        if !self.session.mgm_authenticated {
            return (Vec::new(), SW_SECURITY);
        }
        let Some((0x5C, tag_bytes, rest)) = tlv(data) else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        let Some((0x53, value, _)) = tlv(rest) else {
            return (Vec::new(), SW_WRONG_DATA);
        };
        let tag = tag_bytes
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        if value.is_empty() {
            self.state.objects.remove(&tag);
        } else {
            self.state.objects.insert(tag, value.to_vec());
        }
        (Vec::new(), self.persist(SW_OK))
    }

    /// ATTEST: a DER X.509 certificate for the key in the slot. A real YubiKey signs it
    /// with the attestation key of slot F9; this one signs it with the slot key itself.
    fn attest(&self, slot: u8) -> (Vec<u8>, u16) {
        let Some(key) = self.state.keys.get(&slot) else {
            return (Vec::new(), SW_NOT_FOUND);
        };
        let (Some(secret), Some(point)) = (key.secret_key(), key.public_point()) else {
            return (Vec::new(), SW_UNKNOWN);
        };
        let cert = attestation_certificate(&secret, &point, self.state.serial, slot);
        (cert, SW_OK)
    }
}

/// The key operation of a GENERAL AUTHENTICATE: ECDH with the peer's point, or an
/// ECDSA signature over a digest (left-padded to 32 bytes); the status word on failure.
fn key_operation(secret: &SecretKey, input: Op<'_>) -> Result<Vec<u8>, u16> {
    match input {
        Op::Ecdh(point) => {
            let Ok(peer) = PublicKey::from_sec1_bytes(point) else {
                return Err(SW_WRONG_DATA);
            };
            let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
            Ok(shared.raw_secret_bytes().to_vec())
        }
        Op::Sign(digest) => {
            if digest.len() > 32 {
                return Err(SW_WRONG_DATA);
            }
            let mut prehash = [0u8; 32];
            prehash[32 - digest.len()..].copy_from_slice(digest);
            let signer = SigningKey::from(secret);
            let Ok(signature): Result<Signature, _> = signer.sign_prehash(&prehash) else {
                return Err(SW_UNKNOWN);
            };
            Ok(signature.to_der().as_bytes().to_vec())
        }
    }
}

enum Op<'a> {
    Ecdh(&'a [u8]),
    Sign(&'a [u8]),
}

/// A parsed command APDU (short or extended length).
struct Command<'a> {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &'a [u8],
}

impl Command<'_> {
    fn parse(apdu: &[u8]) -> Option<Command<'_>> {
        let (header, body) = apdu.split_at_checked(4)?;
        let [cla, ins, p1, p2] = [header[0], header[1], header[2], header[3]];
        let data = match body.len() {
            0 | 1 => &[][..],
            _ if body[0] != 0 => {
                let lc = usize::from(body[0]);
                body.get(1..1 + lc)?
            }
            // Extended length: 00 Lc1 Lc2 data [Le Le], or 00 Le1 Le2.
            2 => return None,
            3 => &[][..],
            _ => {
                let lc = usize::from(u16::from_be_bytes([*body.get(1)?, *body.get(2)?]));
                body.get(3..3 + lc)?
            }
        };
        Some(Command {
            cla,
            ins,
            p1,
            p2,
            data,
        })
    }
}

fn sw_only(sw: u16) -> Vec<u8> {
    sw.to_be_bytes().to_vec()
}

/// A PIN or PUK without its `FF` padding.
fn unpad(data: &[u8]) -> &[u8] {
    let end = data.iter().position(|b| *b == 0xFF).unwrap_or(data.len());
    &data[..end]
}

/// Encodes a BER-TLV with a one- or two-byte tag.
fn ber(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    if tag > 0xFF {
        out.extend_from_slice(&[(tag >> 8) as u8, tag as u8]);
    } else {
        out.push(tag as u8);
    }
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(value);
    out
}

/// Parses one BER-TLV: tag (one byte, or two when the low five bits are all set),
/// value, and what follows.
fn tlv(input: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    let (&first, mut rest) = input.split_first()?;
    let mut tag = u32::from(first);
    if first & 0x1F == 0x1F {
        let (&second, r) = rest.split_first()?;
        tag = (tag << 8) | u32::from(second);
        rest = r;
    }
    let (&len0, r) = rest.split_first()?;
    rest = r;
    let len = match len0 {
        0..=0x7F => usize::from(len0),
        0x81 => {
            let (&l, r) = rest.split_first()?;
            rest = r;
            usize::from(l)
        }
        0x82 => {
            let (l, r) = rest.split_at_checked(2)?;
            rest = r;
            usize::from(u16::from_be_bytes([l[0], l[1]]))
        }
        _ => return None,
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// A small X.509 v3 certificate for an attested key, signed with ECDSA-SHA256 by `signer`.
fn attestation_certificate(signer: &SecretKey, point: &[u8], serial: u32, slot: u8) -> Vec<u8> {
    const ECDSA_SHA256: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
    const EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    const PRIME256V1: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    let name = |cn: &str| {
        let attr = [
            &[0x06, 0x03, 0x55, 0x04, 0x03][..],
            &ber(0x0C, cn.as_bytes()),
        ]
        .concat();
        ber(0x30, &ber(0x31, &ber(0x30, &attr)))
    };
    let alg = ber(0x30, &ECDSA_SHA256);
    let mut bit_string = vec![0x00];
    bit_string.extend_from_slice(point);
    let spki = ber(
        0x30,
        &[
            ber(0x30, &[&EC_PUBLIC_KEY[..], &PRIME256V1[..]].concat()),
            ber(0x03, &bit_string),
        ]
        .concat(),
    );
    let validity = ber(
        0x30,
        &[ber(0x17, b"160314000000Z"), ber(0x18, b"20710317000000Z")].concat(),
    );
    // A positive, minimally encoded INTEGER: a non-zero first byte below 0x80.
    let mut serial_bytes = vec![0x01];
    serial_bytes.extend_from_slice(&serial.to_be_bytes());
    serial_bytes.push(slot);
    let tbs = ber(
        0x30,
        &[
            ber(0xA0, &ber(0x02, &[0x02])),
            ber(0x02, &serial_bytes),
            alg.clone(),
            name("Yubico PIV Attestation"),
            validity,
            name(&format!("YubiKey PIV Attestation {slot:02x}")),
            spki,
        ]
        .concat(),
    );
    let signature: Signature = SigningKey::from(signer).sign(&tbs);
    let mut sig_bits = vec![0x00];
    sig_bits.extend_from_slice(signature.to_der().as_bytes());
    ber(0x30, &[tbs, alg, ber(0x03, &sig_bits)].concat())
}

/// The card thread: vpcd's framing is a big-endian u16 length, then the message. A
/// one-byte message is a control code (0 power off, 1 power on, 2 reset, 4 get ATR);
/// anything longer is a command APDU, answered with data and status word.
fn serve(mut card: PivCard, mut stream: TcpStream, stop: &AtomicBool) -> PivCard {
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            break;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut msg).is_err() {
            break;
        }
        let Some(reply) = card.handle_message(&msg, stop) else {
            continue;
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(n) = u16::try_from(reply.len()) else {
            break;
        };
        let mut frame = n.to_be_bytes().to_vec();
        frame.extend_from_slice(&reply);
        if stream.write_all(&frame).is_err() {
            break;
        }
    }
    card
}

/// A card connected to vpcd, served on its own thread. Dropping it pulls the card out of
/// the reader.
pub struct RunningCard {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<PivCard>>,
    touch: TouchControl,
}

impl RunningCard {
    /// The handle that decides what the emulated user does on touch requests.
    pub fn touch(&self) -> TouchControl {
        self.touch.clone()
    }

    /// Pulls the card out of the reader and gives it back (with its state, and its file
    /// if it has one).
    pub fn stop(mut self) -> Result<PivCard, SimError> {
        self.halt()
            .ok_or_else(|| SimError::Start("the card thread panicked".into()))
    }

    fn halt(&mut self) -> Option<PivCard> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.thread.take()?.join().ok()
    }
}

impl Drop for RunningCard {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(card: &mut PivCard, apdu: &[u8]) -> (Vec<u8>, u16) {
        let stop = AtomicBool::new(false);
        let mut out = card.process(apdu, &stop);
        let sw = out.split_off(out.len() - 2);
        (out, u16::from_be_bytes([sw[0], sw[1]]))
    }

    #[test]
    fn pin_counts_down_and_blocks() {
        let mut card = PivCard::new(1);
        let select = [0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
        assert_eq!(run(&mut card, &select).1, SW_OK);
        assert_eq!(run(&mut card, &[0x00, 0x20, 0x00, 0x80]).1, 0x63C3);
        let mut wrong = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        wrong.extend_from_slice(b"000000\xff\xff");
        assert_eq!(run(&mut card, &wrong).1, 0x63C2);
        assert_eq!(run(&mut card, &wrong).1, 0x63C1);
        assert_eq!(run(&mut card, &wrong).1, SW_BLOCKED);
        let mut right = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        right.extend_from_slice(b"123456\xff\xff");
        assert_eq!(run(&mut card, &right).1, SW_BLOCKED);
    }

    #[test]
    fn management_key_then_chained_put_data_and_long_get_data() {
        let mut card = PivCard::new(2);
        // Without the management key, PUT DATA is refused.
        let mut put = vec![0x5C, 0x03, 0x5F, 0xC1, 0x05];
        put.extend(ber(0x53, &[0xA5; 400]));
        assert_eq!(
            run(
                &mut card,
                &[&[0x00, 0xDB, 0x3F, 0xFF, 0x08], &put[..8]].concat()
            )
            .1,
            SW_SECURITY
        );

        let cipher = TdesEde3::new(GenericArray::from_slice(&DEFAULT_MGM_KEY));
        let (out, sw) = run(
            &mut card,
            &[0x00, 0x87, 0x03, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00],
        );
        assert_eq!((sw, out.len()), (SW_OK, 12));
        let mut witness = [0u8; 8];
        witness.copy_from_slice(&out[4..12]);
        cipher.decrypt_block(GenericArray::from_mut_slice(&mut witness));
        let challenge = [9u8; 8];
        let mut auth = vec![0x00, 0x87, 0x03, 0x9B, 22, 0x7C, 20, 0x80, 8];
        auth.extend_from_slice(&witness);
        auth.extend_from_slice(&[0x81, 8]);
        auth.extend_from_slice(&challenge);
        let (out, sw) = run(&mut card, &auth);
        assert_eq!(sw, SW_OK);
        let mut expected = challenge;
        cipher.encrypt_block(GenericArray::from_mut_slice(&mut expected));
        assert_eq!(out[4..12], expected);

        // PUT DATA in chained parts of at most 255 bytes.
        let mut parts = put.chunks(255).peekable();
        while let Some(part) = parts.next() {
            let cla = if parts.peek().is_some() { 0x10 } else { 0x00 };
            let len = u8::try_from(part.len()).expect("short");
            let apdu = [&[cla, 0xDB, 0x3F, 0xFF, len], part].concat();
            assert_eq!(run(&mut card, &apdu).1, SW_OK);
        }
        // GET DATA answers in 256-byte parts, the rest with GET RESPONSE.
        let (first, sw) = run(
            &mut card,
            &[0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x05],
        );
        assert_eq!((first.len(), sw >> 8), (256, 0x61));
        let (rest, sw) = run(&mut card, &[0x00, 0xC0, 0x00, 0x00, 0x00]);
        assert_eq!(sw, SW_OK);
        assert_eq!([first, rest].concat(), ber(0x53, &[0xA5; 400]));
    }

    #[test]
    fn tlv_round_trip() {
        let long = vec![7u8; 300];
        let encoded = ber(0x7F49, &long);
        let (tag, value, rest) = tlv(&encoded).expect("parses");
        assert_eq!((tag, value.len(), rest.len()), (0x7F49, 300, 0));
    }
}
