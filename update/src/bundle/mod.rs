//! The update bundle: the format of `docs/reference/update-bundle.md`.
//!
//! ```text
//! magic "PKUPDATE" | format u32 LE | L u32 LE | manifest (L bytes of JSON) | Ed25519 signature (64)
//! | root | verity | uki
//! ```
//!
//! The signature covers everything before it. [`BundleReader::open`] reads and checks
//! the header (magic, format, length, signature, then the manifest's fields) before it
//! reads a byte of any part, so nothing is written for a bundle that was not signed;
//! each part is then read through a [`PartReader`] that hashes as it goes and fails at
//! the part's end when the hash differs. [`make`] writes a bundle on the build host.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod read;
mod version;
mod write;

pub use read::{BundleReader, PartReader, read_manifest_unverified};
pub use version::{Version, VersionError};
pub use write::{BundleSpec, MakeError, make, sign_header};

/// The first 8 bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"PKUPDATE";
/// The format this crate reads and writes.
pub const FORMAT: u32 = 1;
/// The longest manifest, in bytes.
pub const MAX_MANIFEST: u32 = 65_536;
/// Bytes of the signature after the manifest.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes before the manifest: magic, format, length.
pub const PREAMBLE_LEN: usize = 16;
/// The only product a bundle may name.
pub const PRODUCT: &str = "pk-appliance";
/// dm-verity's data and hash block size, and the unit of `data_blocks`.
pub const BLOCK: u64 = 4096;
/// The largest UKI a bundle may carry (the ESP is small).
pub const MAX_UKI: u64 = 256 << 20;

/// A CPU architecture, as Debian names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64.
    Amd64,
    /// AArch64.
    Arm64,
}

impl Arch {
    /// The architecture this program was built for; `None` on one no bundle is made for.
    pub fn current() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            _ => Err(format!("`{s}` is not an architecture (amd64 or arm64)")),
        }
    }
}

/// A 256-bit digest written as 64 hex digits: a part's SHA-256, or the dm-verity root
/// hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The first `n` bytes as lower-case hex.
    pub fn hex_prefix(&self, n: usize) -> String {
        data_encoding::HEXLOWER.encode(&self.0[..n.min(32)])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex_prefix(32))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| "expected 64 hex digits".to_string())?;
        Ok(Digest(bytes))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The three parts of a bundle, in the order they come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartName {
    /// The erofs root file system, written at offset 0 of the slot.
    Root,
    /// Its dm-verity hash tree, written at `hash_offset`.
    Verity,
    /// The unified kernel image, written to the ESP.
    Uki,
}

impl PartName {
    /// Every part, in bundle order.
    pub const ALL: [PartName; 3] = [PartName::Root, PartName::Verity, PartName::Uki];
}

impl fmt::Display for PartName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartName::Root => "root",
            PartName::Verity => "verity",
            PartName::Uki => "uki",
        })
    }
}

/// One part as the manifest names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Which part.
    pub name: PartName,
    /// Its exact length in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Digest,
}

/// The signed manifest. Unknown keys are refused, so a field that matters cannot be
/// ignored by an older installer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The bundle format, [`FORMAT`]; the same as the header's.
    pub format: u32,
    /// [`PRODUCT`].
    pub product: String,
    /// The image's version (its os-release `IMAGE_VERSION`).
    pub version: Version,
    /// The architecture the image runs on.
    pub arch: Arch,
    /// Whether this bundle may replace a higher version.
    pub allow_downgrade: bool,
    /// The dm-verity root hash of `root`; its first 128 bits become the slot's PARTUUID.
    pub roothash: Digest,
    /// `root`'s length in [`BLOCK`]s.
    pub data_blocks: u64,
    /// Bytes from the start of the slot to the hash tree.
    pub hash_offset: u64,
    /// `root`, `verity`, `uki`, in that order.
    pub parts: Vec<Part>,
}

impl Manifest {
    /// Checks the fields the format constrains: the product, the format, the parts and
    /// their sizes. Whether the bundle fits a slot, suits the machine's architecture or
    /// version is the installer's business.
    pub fn check(&self) -> Result<(), BundleError> {
        let bad = |why: String| Err(BundleError::BadManifest(why));
        if self.format != FORMAT {
            return bad(format!(
                "format {} in the manifest, {FORMAT} in the header",
                self.format
            ));
        }
        if self.product != PRODUCT {
            return Err(BundleError::WrongProduct(
                self.product.chars().take(64).collect(),
            ));
        }
        let names: Vec<PartName> = self.parts.iter().map(|p| p.name).collect();
        if names != PartName::ALL {
            return bad("the parts must be exactly root, verity, uki, in that order".into());
        }
        let (root, verity, uki) = (&self.parts[0], &self.parts[1], &self.parts[2]);
        if root.size == 0 || self.data_blocks.checked_mul(BLOCK) != Some(root.size) {
            return bad(format!(
                "root is {} bytes, not data_blocks ({}) times {BLOCK}",
                root.size, self.data_blocks
            ));
        }
        if !self.hash_offset.is_multiple_of(BLOCK) || self.hash_offset < root.size {
            return bad(format!(
                "hash_offset {} is not a multiple of {BLOCK} at or after the root's end ({})",
                self.hash_offset, root.size
            ));
        }
        if verity.size == 0 || self.hash_offset.checked_add(verity.size).is_none() {
            return bad(format!("verity has an impossible size ({})", verity.size));
        }
        if uki.size == 0 || uki.size > MAX_UKI {
            return bad(format!("uki is {} bytes (1 to {MAX_UKI})", uki.size));
        }
        Ok(())
    }

    /// The part called `name`.
    pub fn part(&self, name: PartName) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// The bytes of the slot the root and its hash tree take: `hash_offset` plus the
    /// verity part's size.
    pub fn slot_bytes(&self) -> u64 {
        let verity = self.part(PartName::Verity).map_or(0, |p| p.size);
        self.hash_offset.saturating_add(verity)
    }
}

/// Why a bundle was refused, read from or written to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading the bundle failed.
    #[error("reading the bundle failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bundle ends early.
    #[error("the bundle is truncated: it ends inside {0}")]
    Truncated(String),
    /// The first bytes are not [`MAGIC`].
    #[error("this is not an update bundle (it does not start with PKUPDATE)")]
    NotABundle,
    /// Another format.
    #[error("bundle format {0} is not supported (this installer reads format {FORMAT})")]
    UnsupportedFormat(u32),
    /// The manifest's length is over [`MAX_MANIFEST`] (or zero).
    #[error("the manifest's length, {0} bytes, is not between 1 and {MAX_MANIFEST}")]
    ManifestLength(u32),
    /// The signature does not verify with the update key.
    #[error(
        "the bundle's signature does not verify with the update key: it was not signed with \
         the project's image-signing key, or its header was altered"
    )]
    BadSignature,
    /// The manifest is not valid JSON of the right shape, or its fields disagree.
    #[error("the manifest is not valid: {0}")]
    BadManifest(String),
    /// The manifest names another product.
    #[error("the bundle is for `{0}`, not {PRODUCT}")]
    WrongProduct(String),
    /// The bundle is for another architecture.
    #[error("the bundle is for {bundle}, this machine is {machine}")]
    WrongArch {
        /// The manifest's architecture.
        bundle: Arch,
        /// The machine's.
        machine: Arch,
    },
    /// A part's bytes do not have the manifest's SHA-256.
    #[error(
        "the bundle's {0} part does not match its SHA-256 in the manifest: the bundle was \
         altered or damaged"
    )]
    Altered(PartName),
    /// Bytes follow the last part.
    #[error("the bundle has bytes after its last part")]
    TrailingData,
    /// The reader was used out of order (a part opened before the previous one was read
    /// to its end, or the bundle finished early).
    #[error("the bundle's {0} part was not read to its end")]
    NotRead(PartName),
}
