//! The `yubikey` protector: a P-256 key generated inside a YubiKey's PIV application.
//!
//! The age-plugin-yubikey construction, as a keyslot. Enrolment authenticates with the
//! card's management key, has the card generate a P-256 key in the key-management slot
//! (9D, or a retired slot) with the PIN and touch policies chosen (default: PIN once,
//! touch always), and keeps the card's serial, the slot, the policies and the public key.
//! Wrapping needs no touch: an ephemeral P-256 key `e` is drawn, `shared = ECDH(e, card)`,
//! `KEK = HKDF-SHA256(shared, salt = E || card public key, info = "pk yubikey keyslot v1")`,
//! and the node's key is sealed with XChaCha20-Poly1305 under the KEK and the caller's
//! `aad`; `E` is stored. Unwrapping asks the card for the same ECDH through GENERAL
//! AUTHENTICATE (after the PIN, and a touch when the policy says so).
//!
//! Talks to the card through PC/SC (pcscd) with the `yubikey` crate 0.8 and its
//! `untested` feature, which carries ECDH (`piv::decrypt_data`); 0.9 is a release
//! candidate.
//!
//! The stored record ([`YubiKeySealed`]), the policies it keeps ([`PinRule`],
//! [`TouchRule`]) and the events ([`YubiKeyEvent`], [`EventSink`]) are `hsm-core`'s
//! `yubikey` module, re-exported here, so that keyslots can be read without linking
//! libpcsclite.

use std::time::{Duration, Instant};

use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rand_core::OsRng;
use sha2::Sha256;
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{MgmKey, PinPolicy, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

use crate::{DataKey, Kind, Pin, Protector, Sealed, UnwrapError, WrapError, Wrapped};

const HKDF_INFO: &[u8] = b"pk yubikey keyslot v1";
/// A touch that fails after this long was not given in time; sooner, it was refused.
const TOUCH_TIMEOUT_HINT: Duration = Duration::from_secs(5);

pub use hsm_core::yubikey::*;

/// The card's PIN policy for a key generated under `rule`.
fn pin_policy(rule: PinRule) -> PinPolicy {
    match rule {
        PinRule::Never => PinPolicy::Never,
        PinRule::Once => PinPolicy::Once,
        PinRule::Always => PinPolicy::Always,
    }
}

/// The card's touch policy for a key generated under `rule`.
fn touch_policy(rule: TouchRule) -> TouchPolicy {
    match rule {
        TouchRule::Never => TouchPolicy::Never,
        TouchRule::Always => TouchPolicy::Always,
        TouchRule::Cached => TouchPolicy::Cached,
    }
}

/// Unlock by a YubiKey (PIV, P-256 ECDH).
pub struct YubiKeyProtector {
    serial: Option<u32>,
    pin: Option<Pin>,
    slot: u8,
    pin_policy: PinRule,
    touch_policy: TouchRule,
    management_key: Option<Zeroizing<[u8; 24]>>,
    events: Option<EventSink>,
}

impl YubiKeyProtector {
    /// A protector for the card with `serial` (any single card when `None`), with `pin`.
    /// Enrolment defaults: slot 9D, PIN once, touch always, the default management key.
    pub fn new(serial: Option<u32>, pin: Option<Pin>) -> Self {
        YubiKeyProtector {
            serial,
            pin,
            slot: 0x9d,
            pin_policy: PinRule::Once,
            touch_policy: TouchRule::Always,
            management_key: None,
            events: None,
        }
    }

    /// Chooses the slot and policies of keys this protector generates.
    pub fn with_key(mut self, slot: u8, pin: PinRule, touch: TouchRule) -> Self {
        self.slot = slot;
        self.pin_policy = pin;
        self.touch_policy = touch;
        self
    }

    /// Uses this 3DES management key instead of the default (firmware 5.7 and later ship
    /// with a random AES key; set one of yours with `ykman piv access change-management-key`).
    pub fn with_management_key(mut self, key: [u8; 24]) -> Self {
        self.management_key = Some(Zeroizing::new(key));
        self
    }

    /// Sends touch prompts to `sink`.
    pub fn with_events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    fn emit(&self, event: YubiKeyEvent) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }
}

/// Why no card was opened.
enum OpenError {
    NoReader,
    WrongCard(u32),
    Absent(String),
}

fn open(serial: Option<u32>) -> Result<YubiKey, OpenError> {
    // Without pcscd there is no reader to speak of.
    let mut context = yubikey::reader::Context::open().map_err(|_| OpenError::NoReader)?;
    let readers: Vec<_> = match context.iter() {
        Ok(readers) => readers.collect(),
        Err(_) => return Err(OpenError::NoReader),
    };
    if readers.is_empty() {
        return Err(OpenError::NoReader);
    }
    let mut seen = Vec::new();
    for reader in &readers {
        if let Ok(card) = reader.open() {
            let found: u32 = card.serial().into();
            if serial.is_none_or(|s| s == found) {
                return Ok(card);
            }
            seen.push(found);
        }
    }
    match serial {
        Some(expected) if !seen.is_empty() => Err(OpenError::WrongCard(expected)),
        _ => Err(OpenError::Absent("no YubiKey in any reader".into())),
    }
}

fn kek(shared: &[u8], ephemeral: &[u8], card: &[u8]) -> DataKey {
    let mut salt = Vec::with_capacity(ephemeral.len() + card.len());
    salt.extend_from_slice(ephemeral);
    salt.extend_from_slice(card);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(HKDF_INFO, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    DataKey::from_bytes(*out)
}

fn yk_error(e: &yubikey::Error) -> String {
    e.to_string()
}

impl Protector for YubiKeyProtector {
    fn kind(&self) -> Kind {
        Kind::YubiKey
    }

    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Sealed, WrapError> {
        let token = |message: String| WrapError::token(Kind::YubiKey, message);
        let slot = SlotId::try_from(self.slot)
            .map_err(|_| WrapError::Invalid(format!("0x{:02x} is not a PIV slot", self.slot)))?;
        let mut card = open(self.serial).map_err(|e| match e {
            OpenError::NoReader => WrapError::TokenAbsent {
                what: "no smart-card reader (is pcscd running?)".into(),
            },
            OpenError::WrongCard(expected) => WrapError::TokenAbsent {
                what: format!("no YubiKey with serial {expected}"),
            },
            OpenError::Absent(what) => WrapError::TokenAbsent { what },
        })?;
        let serial: u32 = card.serial().into();
        let mgm = match &self.management_key {
            Some(bytes) => MgmKey::new(**bytes)
                .map_err(|_| WrapError::Invalid("not a 3DES management key".into()))?,
            None => MgmKey::default(),
        };
        card.authenticate(mgm).map_err(|_| {
            WrapError::Invalid(
                "the card refused the management key (not the default? pass it with --yubikey-management-key-file)".into(),
            )
        })?;
        if let Some(pin) = &self.pin {
            card.verify_pin(pin.expose()).map_err(|e| match e {
                yubikey::Error::WrongPin { tries } => WrapError::WrongPin {
                    retries_left: Some(tries as u32),
                },
                yubikey::Error::PinLocked => WrapError::PinBlocked,
                other => token(yk_error(&other)),
            })?;
        }
        let spki = piv::generate(
            &mut card,
            slot,
            AlgorithmId::EccP256,
            pin_policy(self.pin_policy),
            touch_policy(self.touch_policy),
        )
        .map_err(|e| token(format!("key generation failed: {e}")))?;
        let public_key = spki.subject_public_key.raw_bytes().to_vec();
        let card_point = p256::PublicKey::from_sec1_bytes(&public_key)
            .map_err(|_| token("the card returned an invalid public key".into()))?;

        let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
        let ephemeral_point = ephemeral
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let shared = ephemeral.diffie_hellman(&card_point);
        let kek = kek(shared.raw_secret_bytes(), &ephemeral_point, &public_key);
        let wrapped = Wrapped::seal(&kek, key, aad);
        Ok(Sealed::YubiKey(YubiKeySealed {
            serial,
            slot: self.slot,
            pin_policy: self.pin_policy,
            touch_policy: self.touch_policy,
            public_key,
            ephemeral: ephemeral_point,
            wrapped,
        }))
    }

    fn unwrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<DataKey, UnwrapError> {
        let Sealed::YubiKey(s) = sealed else {
            return Err(UnwrapError::wrong_kind(Kind::YubiKey, sealed));
        };
        let token = |message: String| UnwrapError::token(Kind::YubiKey, message);
        let slot = SlotId::try_from(s.slot).map_err(|_| UnwrapError::Corrupt("PIV slot"))?;
        if s.pin_policy != PinRule::Never && self.pin.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(UnwrapError::PinRequired);
        }
        let mut card = open(Some(s.serial)).map_err(|e| match e {
            OpenError::NoReader => UnwrapError::NoReader,
            OpenError::WrongCard(expected) => UnwrapError::WrongCard {
                expected_serial: expected,
            },
            OpenError::Absent(what) => UnwrapError::TokenAbsent { what },
        })?;
        if let Some(pin) = self.pin.as_ref().filter(|p| !p.is_empty()) {
            card.verify_pin(pin.expose()).map_err(|e| match e {
                yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => {
                    UnwrapError::PinBlocked
                }
                yubikey::Error::WrongPin { tries } => UnwrapError::WrongPin {
                    retries_left: Some(tries as u32),
                },
                other => token(yk_error(&other)),
            })?;
        }
        let touch = s.touch_policy != TouchRule::Never;
        if touch {
            self.emit(YubiKeyEvent::TouchNeeded { serial: s.serial });
        }
        let started = Instant::now();
        let result = piv::decrypt_data(&mut card, &s.ephemeral, AlgorithmId::EccP256, slot);
        if touch {
            self.emit(YubiKeyEvent::TouchDone);
        }
        let shared = result.map_err(|e| match e {
            yubikey::Error::AuthenticationError if touch => {
                if started.elapsed() >= TOUCH_TIMEOUT_HINT {
                    UnwrapError::TouchTimeout
                } else {
                    UnwrapError::TouchDenied
                }
            }
            other => token(format!("the card's key operation failed: {other}")),
        })?;
        if shared.len() != 32 {
            return Err(UnwrapError::KeyNotOnToken(format!(
                "slot 0x{:02x} of card {} holds another kind of key",
                s.slot, s.serial
            )));
        }
        let kek = kek(&shared, &s.ephemeral, &s.public_key);
        s.wrapped.open(&kek, aad).ok_or_else(|| {
            UnwrapError::KeyNotOnToken(format!(
                "slot 0x{:02x} of card {} holds another key than at enrolment",
                s.slot, s.serial
            ))
        })
    }
}
