//! Writing a bundle, on the build host.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest as _, Sha256};

use super::{
    Arch, BundleError, Digest, FORMAT, MAGIC, MAX_MANIFEST, Manifest, PRODUCT, Part, PartName,
    Version,
};

/// What a bundle says besides its parts: the values `veritysetup format` printed and the
/// image's version and architecture.
#[derive(Clone, Debug)]
pub struct BundleSpec {
    /// The image's `IMAGE_VERSION`.
    pub version: Version,
    /// Its architecture.
    pub arch: Arch,
    /// The dm-verity root hash.
    pub roothash: Digest,
    /// The root's length in 4 KiB blocks.
    pub data_blocks: u64,
    /// Where the hash tree starts in the slot.
    pub hash_offset: u64,
    /// Whether the bundle may replace a higher version.
    pub allow_downgrade: bool,
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MakeError {
    /// A part file could not be read, or the output written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The bundle would be refused by the installer.
    #[error(transparent)]
    Invalid(#[from] BundleError),
    /// A part file changed between hashing it and copying it.
    #[error("{0}: the file changed while the bundle was being made")]
    Changed(PathBuf),
}

/// The header for `manifest_json`: magic, format, length, the manifest and the Ed25519
/// signature by `key` over all of them. Refuses a manifest over [`MAX_MANIFEST`] bytes.
/// (Tests use it to sign manifests [`make`] would refuse.)
pub fn sign_header(manifest_json: &[u8], key: &SigningKey) -> Result<Vec<u8>, BundleError> {
    let len = u32::try_from(manifest_json.len())
        .ok()
        .filter(|&l| l > 0 && l <= MAX_MANIFEST)
        .ok_or(BundleError::ManifestLength(
            u32::try_from(manifest_json.len()).unwrap_or(u32::MAX),
        ))?;
    let mut header = Vec::with_capacity(16 + manifest_json.len() + 64);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(manifest_json);
    let signature = key.sign(&header);
    header.extend_from_slice(&signature.to_bytes());
    Ok(header)
}

/// Makes a bundle of the files `root`, `verity` and `uki` into `out`, signed with `key`,
/// and returns its manifest. Each file is hashed, the manifest checked as the installer
/// would check it, then the files are copied and hashed again, so a file that changed
/// in between is an error rather than a bundle that cannot install.
pub fn make(
    key: &SigningKey,
    spec: &BundleSpec,
    [root, verity, uki]: [&Path; 3],
    out: &mut impl Write,
) -> Result<Manifest, MakeError> {
    let paths = [root, verity, uki];
    let mut parts = Vec::with_capacity(3);
    for (name, path) in PartName::ALL.into_iter().zip(paths) {
        let (size, sha256) = hash_file(path, &mut io::sink())?;
        parts.push(Part { name, size, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT,
        product: PRODUCT.to_string(),
        version: spec.version.clone(),
        arch: spec.arch,
        allow_downgrade: spec.allow_downgrade,
        roothash: spec.roothash,
        data_blocks: spec.data_blocks,
        hash_offset: spec.hash_offset,
        parts,
    };
    manifest.check()?;
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BundleError::BadManifest(e.to_string()))?;
    let header = sign_header(&json, key)?;
    let out_err = |source| MakeError::Io {
        path: PathBuf::from("the output"),
        source,
    };
    out.write_all(&header).map_err(out_err)?;
    for (part, path) in manifest.parts.iter().zip(paths) {
        let copied = hash_file(path, out)?;
        if copied != (part.size, part.sha256) {
            return Err(MakeError::Changed(path.to_path_buf()));
        }
    }
    out.flush().map_err(out_err)?;
    Ok(manifest)
}

/// The length and SHA-256 of the file at `path`, copied into `out` on the way.
fn hash_file(path: &Path, out: &mut impl Write) -> Result<(u64, Digest), MakeError> {
    let io_err = |source| MakeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|source| MakeError::Io {
            path: PathBuf::from("the output"),
            source,
        })?;
        size += n as u64;
    }
    Ok((size, Digest(hasher.finalize().into())))
}
