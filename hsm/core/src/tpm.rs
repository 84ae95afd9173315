//! The `tpm` keyslot's stored record and its options, without the TPM driver.
//!
//! The protector that makes and opens these records, `TpmProtector`, talks to the TPM
//! through libtss2 and lives in the `hsm` crate (`hsm::tpm`, which re-exports this module).
//! In short: a sealed data object under the owner hierarchy's storage primary key holds a
//! per-slot key-encryption key, optionally bound to PCR values ([`PcrPolicy`]) and/or a
//! PIN, and the node's key is wrapped under that key ([`TpmSealed::wrapped`]).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Wrapped;

/// The TCTI used when none is configured: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The PCR bank a policy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcrBank {
    /// SHA-1 bank (legacy firmware).
    Sha1,
    /// SHA-256 bank (the default).
    Sha256,
    /// SHA-384 bank.
    Sha384,
}

impl FromStr for PcrBank {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(PcrBank::Sha1),
            "sha256" => Ok(PcrBank::Sha256),
            "sha384" => Ok(PcrBank::Sha384),
            other => Err(format!(
                "unknown PCR bank {other:?}; use sha1, sha256 or sha384"
            )),
        }
    }
}

/// PCRs a sealed object is bound to: it unseals only while they hold their enrolment values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrPolicy {
    /// The bank to read.
    pub bank: PcrBank,
    /// PCR indices, 0 to 23.
    pub pcrs: Vec<u8>,
}

impl PcrPolicy {
    /// Parses a comma-separated list of PCR indices, such as `0,7,16`.
    pub fn parse_list(bank: PcrBank, list: &str) -> Result<Self, String> {
        let mut pcrs = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let n: u8 = part
                .parse()
                .map_err(|_| format!("{part:?} is not a PCR index"))?;
            if n > 23 {
                return Err(format!("PCR index {n} is out of range 0-23"));
            }
            if !pcrs.contains(&n) {
                pcrs.push(n);
            }
        }
        if pcrs.is_empty() {
            return Err("the PCR list is empty".into());
        }
        pcrs.sort_unstable();
        Ok(PcrPolicy { bank, pcrs })
    }
}

/// A `tpm` keyslot's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmSealed {
    /// The sealed object's public area (TPMT_PUBLIC), marshalled.
    #[serde(with = "crate::b64")]
    pub public: Vec<u8>,
    /// The sealed object's TPM2B_PRIVATE, encrypted by the TPM under its primary key.
    #[serde(with = "crate::b64")]
    pub private: Vec<u8>,
    /// The PCR policy the object is bound to, if any.
    pub pcr_policy: Option<PcrPolicy>,
    /// Whether the object has a PIN (authValue).
    pub pin: bool,
    /// The node key wrapped under the sealed KEK.
    #[serde(flatten)]
    pub wrapped: Wrapped,
}
