//! [`VaultId`]: a vault's permanent name on every node that holds it.
//!
//! A leaf module: vaults, the node graph's shares, notifications and the peer protocol
//! all carry vault ids, and none of them needs the others for it. (`NodeId` stays in
//! [`crate::identity`]: making one checks the key it names.)

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::base32hex;

/// A vault's permanent, random identifier (names can change).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultId(pub(crate) [u8; 16]);

impl VaultId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", base32hex().encode(&self.0))
    }
}

impl fmt::Debug for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultId({self})")
    }
}

impl FromStr for VaultId {
    type Err = BadVaultId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s
            .strip_prefix('v')
            .and_then(|rest| base32hex().decode(rest.as_bytes()).ok())
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or(BadVaultId)?;
        Ok(VaultId(bytes))
    }
}

impl Serialize for VaultId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VaultId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Text that is not a vault id (`v` and 26 base32hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a vault id")]
pub struct BadVaultId;
