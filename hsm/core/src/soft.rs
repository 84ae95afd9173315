//! The `soft` protector: a passphrase stretched with Argon2id, XChaCha20-Poly1305.
//!
//! Not hardware: whoever has the data directory can try passphrases offline, at the cost
//! the Argon2id parameters set. The parameters are stored with each slot, so they can be
//! raised later without breaking existing slots.

use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{DataKey, Kind, Pin, Protector, Sealed, UnwrapError, WrapError, Wrapped};

/// Argon2id cost parameters, stored with every `soft` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes over memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Argon2Params {
    /// The default for new slots: 64 MiB, 3 passes, 1 lane.
    ///
    /// Chosen for a Raspberry Pi 4 class CPU (Cortex-A72, 1.5 GHz): about 130 ms on the
    /// x86 machines here, an estimated 0.6-1.2 s on a Pi 4; see
    /// `docs/reference/benchmarks.md` for the figures and the reasoning. One lane
    /// because the `argon2` crate computes lanes on one thread, so extra lanes cost time
    /// without adding memory hardness per second.
    pub const DEFAULT: Argon2Params = Argon2Params {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    /// Cheap parameters for tests and benchmarks of code paths other than Argon2 itself.
    /// Never use them for a real passphrase.
    pub const INSECURE_FOR_TESTS: Argon2Params = Argon2Params {
        m_kib: 256,
        t: 1,
        p: 1,
    };

    /// Upper bounds accepted from a stored slot, so a tampered file cannot make unlocking
    /// allocate gigabytes or spin for hours.
    const MAX: Argon2Params = Argon2Params {
        m_kib: 4 * 1024 * 1024,
        t: 64,
        p: 16,
    };

    fn to_argon2(self) -> Option<Argon2<'static>> {
        if self.m_kib > Self::MAX.m_kib || self.t > Self::MAX.t || self.p > Self::MAX.p {
            return None;
        }
        let params = Params::new(self.m_kib, self.t, self.p, Some(32)).ok()?;
        Some(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A `soft` keyslot's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftSealed {
    /// Argon2id parameters used to derive the key-encryption key.
    pub argon2: Argon2Params,
    /// Argon2 salt.
    #[serde(with = "crate::b64")]
    pub(crate) salt: Vec<u8>,
    /// The key wrapped under the key derived from the passphrase.
    #[serde(flatten)]
    pub wrapped: Wrapped,
}

/// Unlock by passphrase. Clearly labelled as not hardware ([`Kind::is_hardware`]).
pub struct SoftProtector {
    passphrase: Pin,
    params: Argon2Params,
}

impl SoftProtector {
    /// A protector for `passphrase`; `params` apply to slots it creates. Unwrapping uses
    /// the parameters stored in the slot.
    pub fn new(passphrase: Pin, params: Argon2Params) -> Self {
        SoftProtector { passphrase, params }
    }

    fn derive(&self, params: Argon2Params, salt: &[u8]) -> Option<DataKey> {
        let argon2 = params.to_argon2()?;
        let mut out = Zeroizing::new([0u8; 32]);
        argon2
            .hash_password_into(self.passphrase.expose(), salt, out.as_mut())
            .ok()?;
        Some(DataKey::from_bytes(*out))
    }
}

impl Protector for SoftProtector {
    fn kind(&self) -> Kind {
        Kind::Soft
    }

    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Sealed, WrapError> {
        if self.passphrase.is_empty() {
            return Err(WrapError::Invalid("the passphrase is empty".into()));
        }
        let mut salt = vec![0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let kek = self
            .derive(self.params, &salt)
            .ok_or_else(|| WrapError::Invalid("Argon2id parameters out of range".into()))?;
        let wrapped = Wrapped::seal(&kek, key, aad);
        Ok(Sealed::Soft(SoftSealed {
            argon2: self.params,
            salt,
            wrapped,
        }))
    }

    fn unwrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<DataKey, UnwrapError> {
        let Sealed::Soft(s) = sealed else {
            return Err(UnwrapError::wrong_kind(Kind::Soft, sealed));
        };
        let kek = self
            .derive(s.argon2, &s.salt)
            .ok_or(UnwrapError::Corrupt("Argon2id parameters out of range"))?;
        s.wrapped
            .open(&kek, aad)
            .ok_or(UnwrapError::WrongPassphrase)
    }
}
