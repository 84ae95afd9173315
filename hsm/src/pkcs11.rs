//! The `pkcs11` protector: a non-extractable AES-256 key inside a PKCS#11 token.
//!
//! Enrolment logs in to the token (found by its label, because slot numbers change when
//! tokens come and go), has the token generate an AES-256 key with `CKA_SENSITIVE=true`
//! and `CKA_EXTRACTABLE=false`, reads those attributes back and refuses a token that did
//! not honour them, then encrypts the node's key with `CKM_AES_GCM` (random 96-bit IV,
//! 128-bit tag, the caller's `aad`). The key never leaves the token; the record keeps its
//! `CKA_ID`.
//!
//! A PKCS#11 module is process-global (`C_Initialize` may run once per process), so loaded
//! modules are kept in one process-wide table and shared by every protector.
//!
//! The stored record ([`Pkcs11Sealed`]) and [`KeyReport`] are `hsm-core`'s `pkcs11`
//! module, re-exported here, so that keyslots can be read without loading a module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::{DataKey, Kind, Pin, Protector, Sealed, UnwrapError, WrapError};

/// The directories a module named only by a stored keyslot may be loaded from (after
/// resolving symbolic links and `..`): places only the system's packages write. A module
/// anywhere else must be named by this machine's configuration ([`Pkcs11Protector::with_module`]).
pub(crate) const SYSTEM_MODULE_DIRS: &[&str] = &["/usr/lib", "/usr/lib64", "/usr/local/lib"];

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

pub use hsm_core::pkcs11::*;

/// Unlock by a key inside a PKCS#11 token.
pub struct Pkcs11Protector {
    module: Option<PathBuf>,
    token_label: String,
    pin: Pin,
}

impl Pkcs11Protector {
    /// A protector for the token labelled `token_label`, reached through the PKCS#11
    /// module at `module`, logging in with `pin`.
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: Pin) -> Self {
        Pkcs11Protector {
            module: Some(module.into()),
            token_label: token_label.into(),
            pin,
        }
    }

    /// A protector for unlocking: module and token label come from the stored record.
    pub fn for_unlock(pin: Pin) -> Self {
        Pkcs11Protector {
            module: None,
            token_label: String::new(),
            pin,
        }
    }

    /// Overrides the module path stored in records (the module moved, or another machine).
    pub fn with_module(mut self, module: impl Into<PathBuf>) -> Self {
        self.module = Some(module.into());
        self
    }
}

impl Pkcs11Protector {
    /// The module to open for a stored record: the configured one, else the record's, if
    /// it lies in [`SYSTEM_MODULE_DIRS`].
    fn module_for(&self, s: &Pkcs11Sealed) -> Result<PathBuf, UnwrapError> {
        if let Some(configured) = &self.module {
            return Ok(configured.clone());
        }
        let refused = || UnwrapError::UntrustedModule {
            module: s.module.display().to_string(),
        };
        if !s.module.is_absolute() {
            return Err(refused());
        }
        let Ok(real) = std::fs::canonicalize(&s.module) else {
            return Err(UnwrapError::TokenAbsent {
                what: format!("no PKCS#11 module at {}", s.module.display()),
            });
        };
        if SYSTEM_MODULE_DIRS.iter().any(|dir| real.starts_with(dir)) {
            Ok(real)
        } else {
            Err(refused())
        }
    }

    /// Logs in to the token of a stored record and finds the record's key on it.
    fn open_key(&self, s: &Pkcs11Sealed) -> Result<(Token, ObjectHandle), UnwrapError> {
        let module = self.module_for(s)?;
        let token = Token::open(&module, &s.token_label, &self.pin)?;
        let handle = find_key(&token.session, &s.key_id)
            .map_err(|e| UnwrapError::token(Kind::Pkcs11, e))?
            .ok_or_else(|| {
                UnwrapError::KeyNotOnToken(format!(
                    "token {:?} has no key with this slot's id",
                    s.token_label
                ))
            })?;
        Ok((token, handle))
    }
}

/// Loads (once per process) and initialises the module at `path`.
fn module(path: &Path) -> Result<Arc<Pkcs11>, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Pkcs11>>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    if !path.exists() {
        return Err(format!("no PKCS#11 module at {}", path.display()));
    }
    let pkcs11 = Pkcs11::new(path)
        .map_err(|e| format!("cannot load PKCS#11 module {}: {e}", path.display()))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("cannot initialise {}: {e}", path.display())),
    }
    let pkcs11 = Arc::new(pkcs11);
    modules.insert(path.to_owned(), pkcs11.clone());
    Ok(pkcs11)
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// An open, logged-in session on the token with the wanted label.
struct Token {
    session: Session,
}

enum LoginError {
    Absent(String),
    WrongPin(Option<u32>),
    Blocked,
    Other(String),
}

/// Both operations log in the same way, and report a failed login alike.
macro_rules! from_login_error {
    ($($error:ident),*) => {
        $(impl From<LoginError> for $error {
            fn from(e: LoginError) -> Self {
                match e {
                    LoginError::Absent(what) => $error::TokenAbsent { what },
                    LoginError::WrongPin(retries_left) => $error::WrongPin { retries_left },
                    LoginError::Blocked => $error::PinBlocked,
                    LoginError::Other(message) => $error::token(Kind::Pkcs11, message),
                }
            }
        })*
    };
}

from_login_error!(WrapError, UnwrapError);

impl Token {
    fn open(module_path: &Path, label: &str, pin: &Pin) -> Result<Token, LoginError> {
        let pkcs11 = module(module_path).map_err(LoginError::Absent)?;
        let slot = find_slot(&pkcs11, label)?.ok_or_else(|| {
            LoginError::Absent(format!(
                "no PKCS#11 token labelled {label:?} in {}",
                module_path.display()
            ))
        })?;
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| LoginError::Other(format!("cannot open a session: {e}")))?;
        let pin_text = pin.expose_str().ok_or(LoginError::WrongPin(None))?;
        let auth = AuthPin::from(pin_text.as_str());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) => Ok(Token { session }),
            Err(e) => match rv(&e) {
                Some(RvError::PinIncorrect | RvError::PinLenRange) => {
                    let info = pkcs11.get_token_info(slot).ok();
                    if info.as_ref().is_some_and(|i| i.user_pin_locked()) {
                        return Err(LoginError::Blocked);
                    }
                    let final_try = info.is_some_and(|i| i.user_pin_final_try());
                    Err(LoginError::WrongPin(final_try.then_some(1)))
                }
                Some(RvError::PinLocked) => Err(LoginError::Blocked),
                Some(RvError::UserAlreadyLoggedIn) => Ok(Token { session }),
                _ => Err(LoginError::Other(format!("login failed: {e}"))),
            },
        }
    }
}

fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Option<Slot>, LoginError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| LoginError::Other(format!("cannot list slots: {e}")))?;
    for slot in slots {
        if let Ok(info) = pkcs11.get_token_info(slot)
            && info.label().trim_end() == label
        {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

fn find_key(session: &Session, key_id: &[u8]) -> Result<Option<ObjectHandle>, CkError> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Id(key_id.to_vec()),
    ])?;
    Ok(found.into_iter().next())
}

/// Reads the key's own attributes back: true only if the token reports it sensitive,
/// never extractable, and not extractable now.
fn key_is_locked_in(session: &Session, key: ObjectHandle) -> Result<bool, CkError> {
    let attributes = session.get_attributes(
        key,
        &[
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
        ],
    )?;
    let mut ok = attributes.len() == 3;
    for attribute in attributes {
        ok &= match attribute {
            Attribute::Sensitive(v) => v,
            Attribute::Extractable(v) => !v,
            Attribute::NeverExtractable(v) => v,
            _ => false,
        };
    }
    Ok(ok)
}

impl Pkcs11Protector {
    /// Asks the token about the key of `sealed`: its protection attributes, and whether
    /// its value can be read. The value, if a broken token returned it, is discarded.
    pub fn key_report(&self, sealed: &Sealed) -> Result<KeyReport, UnwrapError> {
        let Sealed::Pkcs11(s) = sealed else {
            return Err(UnwrapError::wrong_kind(Kind::Pkcs11, sealed));
        };
        let token_err = |e: CkError| UnwrapError::token(Kind::Pkcs11, e);
        let (token, handle) = self.open_key(s)?;
        let mut report = KeyReport {
            sensitive: false,
            extractable: true,
            never_extractable: false,
            value_readable: false,
        };
        let attributes = token
            .session
            .get_attributes(
                handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .map_err(token_err)?;
        for attribute in attributes {
            match attribute {
                Attribute::Sensitive(v) => report.sensitive = v,
                Attribute::Extractable(v) => report.extractable = v,
                Attribute::NeverExtractable(v) => report.never_extractable = v,
                _ => {}
            }
        }
        report.value_readable = matches!(
            token.session.get_attributes(handle, &[AttributeType::Value]),
            Ok(values) if values.iter().any(|a| matches!(a, Attribute::Value(v) if !v.is_empty()))
        );
        Ok(report)
    }
}

impl Protector for Pkcs11Protector {
    fn kind(&self) -> Kind {
        Kind::Pkcs11
    }

    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Sealed, WrapError> {
        let token_err = |e: CkError| WrapError::token(Kind::Pkcs11, e);
        let module = self
            .module
            .clone()
            .ok_or_else(|| WrapError::Invalid("no PKCS#11 module given".into()))?;
        let token = Token::open(&module, &self.token_label, &self.pin)?;
        let mut key_id = vec![0u8; 16];
        OsRng.fill_bytes(&mut key_id);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(b"pk keyslot".to_vec()),
            Attribute::Id(key_id.clone()),
        ];
        let handle = token
            .session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(token_err)?;
        if !key_is_locked_in(&token.session, handle).map_err(token_err)? {
            let _ = token.session.destroy_object(handle);
            return Err(WrapError::KeyWouldBeExtractable);
        }

        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let mut iv_param = iv;
        let ciphertext = GcmParams::new(&mut iv_param, aad, TAG_BITS.into())
            .and_then(|params| {
                token
                    .session
                    .encrypt(&Mechanism::AesGcm(params), handle, key.expose())
            })
            .map_err(|e| {
                // Leave no unused key behind on the token.
                let _ = token.session.destroy_object(handle);
                token_err(e)
            })?;
        Ok(Sealed::Pkcs11(Pkcs11Sealed {
            module,
            token_label: self.token_label.clone(),
            key_id,
            iv: iv.to_vec(),
            ciphertext,
        }))
    }

    fn unwrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<DataKey, UnwrapError> {
        let Sealed::Pkcs11(s) = sealed else {
            return Err(UnwrapError::wrong_kind(Kind::Pkcs11, sealed));
        };
        let token_err = |e: CkError| UnwrapError::token(Kind::Pkcs11, e);
        if s.iv.len() != IV_LEN {
            return Err(UnwrapError::Corrupt("AES-GCM IV has the wrong length"));
        }
        let (token, handle) = self.open_key(s)?;
        let mut iv = s.iv.clone();
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(token_err)?;
        let plain = token
            .session
            .decrypt(&Mechanism::AesGcm(params), handle, &s.ciphertext)
            .map_err(|e| match rv(&e) {
                // SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR.
                Some(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError,
                ) => UnwrapError::Corrupt("wrapped key does not authenticate"),
                _ => token_err(e),
            })?;
        let plain = Zeroizing::new(plain);
        DataKey::try_from_slice(&plain)
            .ok_or(UnwrapError::Corrupt("wrapped key has the wrong size"))
    }
}
