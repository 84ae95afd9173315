//! Reading a bundle: the header first and whole, then the parts as streams.

use std::io::{self, Read};

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::{
    Arch, BundleError, Digest, FORMAT, MAGIC, MAX_MANIFEST, Manifest, PREAMBLE_LEN, PartName,
    SIGNATURE_LEN,
};

/// The header's bytes, read but not yet trusted.
struct RawHeader {
    /// Magic, format, length and manifest: what the signature covers.
    signed: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl RawHeader {
    /// Reads the header; allocates at most [`MAX_MANIFEST`] bytes, after checking the
    /// length.
    fn read(r: &mut impl Read) -> Result<RawHeader, BundleError> {
        let mut preamble = [0u8; PREAMBLE_LEN];
        read_exact(r, &mut preamble, "the header")?;
        let (magic, rest) = preamble.split_at(8);
        let (format, len) = rest.split_at(4);
        if magic != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let format = u32::from_le_bytes(format.try_into().unwrap_or_default());
        if format != FORMAT {
            return Err(BundleError::UnsupportedFormat(format));
        }
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default());
        if len == 0 || len > MAX_MANIFEST {
            return Err(BundleError::ManifestLength(len));
        }
        let mut signed = vec![0u8; PREAMBLE_LEN + len as usize];
        signed[..PREAMBLE_LEN].copy_from_slice(&preamble);
        read_exact(r, &mut signed[PREAMBLE_LEN..], "the manifest")?;
        let mut signature = [0u8; SIGNATURE_LEN];
        read_exact(r, &mut signature, "the signature")?;
        Ok(RawHeader { signed, signature })
    }

    fn len(&self) -> u64 {
        (self.signed.len() + SIGNATURE_LEN) as u64
    }

    /// The manifest, parsed and checked, trusted or not.
    fn manifest(&self) -> Result<Manifest, BundleError> {
        let manifest: Manifest = serde_json::from_slice(&self.signed[PREAMBLE_LEN..])
            .map_err(|e| BundleError::BadManifest(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks the signature, then the manifest.
    fn verify(&self, key: &VerifyingKey) -> Result<Manifest, BundleError> {
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signed, &signature)
            .map_err(|_| BundleError::BadSignature)?;
        self.manifest()
    }
}

/// Reads the header and returns its manifest (checked for shape, not for its signature):
/// for `pk-bundle inspect` without a key. Nothing it returns may be trusted.
pub fn read_manifest_unverified(r: &mut impl Read) -> Result<Manifest, BundleError> {
    RawHeader::read(r)?.manifest()
}

/// A bundle whose header has been checked; its parts are read one after the other with
/// [`next_part`](Self::next_part), then [`finish`](Self::finish) checks that nothing
/// follows.
pub struct BundleReader<R> {
    inner: R,
    manifest: Manifest,
    header_len: u64,
    /// How many parts have been opened.
    opened: usize,
    /// The part being read, until its last byte has been read and its hash checked.
    current: Option<Current>,
}

struct Current {
    name: PartName,
    expected: Digest,
    remaining: u64,
    hasher: Sha256,
    /// The hash was checked and differed: every later call fails the same way.
    altered: bool,
}

impl<R: Read> BundleReader<R> {
    /// Reads the header from `inner` and checks it: magic, format, the manifest's length,
    /// the signature with `key`, then the manifest's fields and, when `arch` is given,
    /// that the bundle is for it. No part byte has been read when this returns.
    pub fn open(mut inner: R, key: &VerifyingKey, arch: Option<Arch>) -> Result<Self, BundleError> {
        let header = RawHeader::read(&mut inner)?;
        let manifest = header.verify(key)?;
        if let Some(machine) = arch
            && manifest.arch != machine
        {
            return Err(BundleError::WrongArch {
                bundle: manifest.arch,
                machine,
            });
        }
        Ok(BundleReader {
            inner,
            manifest,
            header_len: header.len(),
            opened: 0,
            current: None,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The header's length in bytes (where the first part starts).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// The next part, to be read to its end before the one after it is asked for;
    /// `None` after the last.
    pub fn next_part(&mut self) -> Result<Option<PartReader<'_, R>>, BundleError> {
        self.check_no_current()?;
        let Some(part) = self.manifest.parts.get(self.opened) else {
            return Ok(None);
        };
        self.current = Some(Current {
            name: part.name,
            expected: part.sha256,
            remaining: part.size,
            hasher: Sha256::new(),
            altered: false,
        });
        self.opened += 1;
        let (name, size) = (part.name, part.size);
        Ok(Some(PartReader {
            name,
            size,
            bundle: self,
        }))
    }

    fn check_no_current(&self) -> Result<(), BundleError> {
        match &self.current {
            Some(c) if c.altered => Err(BundleError::Altered(c.name)),
            Some(c) => Err(BundleError::NotRead(c.name)),
            None => Ok(()),
        }
    }

    /// Checks that every part was read and verified and that nothing follows the last:
    /// reads one more byte, so a stream must end (a socket's writer shuts down its side).
    /// Returns the manifest.
    pub fn finish(mut self) -> Result<Manifest, BundleError> {
        self.check_no_current()?;
        if let Some(part) = self.manifest.parts.get(self.opened) {
            return Err(BundleError::NotRead(part.name));
        }
        let mut byte = [0u8; 1];
        match read_retrying(&mut self.inner, &mut byte)? {
            0 => Ok(self.manifest),
            _ => Err(BundleError::TrailingData),
        }
    }

    /// Reads the current part's next bytes into `buf`; see [`PartReader::read_chunk`].
    fn read_part(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        let Some(current) = self.current.as_mut() else {
            return Ok(0);
        };
        if current.altered {
            return Err(BundleError::Altered(current.name));
        }
        let want = usize::try_from(current.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = if want == 0 {
            0
        } else {
            read_retrying(&mut self.inner, &mut buf[..want])?
        };
        if n == 0 && want > 0 {
            return Err(BundleError::Truncated(format!("its {} part", current.name)));
        }
        current.hasher.update(&buf[..n]);
        current.remaining -= n as u64;
        if current.remaining == 0 {
            let got: [u8; 32] = current.hasher.finalize_reset().into();
            if got != current.expected.0 {
                current.altered = true;
                return Err(BundleError::Altered(current.name));
            }
            self.current = None;
        }
        Ok(n)
    }
}

/// One part of a bundle, read in order. The bytes it hands out are the bundle's as they
/// come; the part's SHA-256 is checked when its last byte is read, and a part that
/// differs fails that last read (so a consumer that reads to the end has all of a
/// verified part, or an error).
pub struct PartReader<'a, R> {
    name: PartName,
    size: u64,
    bundle: &'a mut BundleReader<R>,
}

impl<R: Read> PartReader<'_, R> {
    /// Which part this is.
    pub fn name(&self) -> PartName {
        self.name
    }

    /// Its length, as the manifest says.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads up to `buf.len()` bytes of the part; 0 once the whole part has been read
    /// and its hash matched. A stream that ends early is [`BundleError::Truncated`]; a
    /// hash that differs is [`BundleError::Altered`], returned instead of the last bytes.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        self.bundle.read_part(buf)
    }
}

impl<R: Read> Read for PartReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_chunk(buf).map_err(io::Error::other)
    }
}

/// `read_exact`, with a short stream reported as [`BundleError::Truncated`] in `what`.
fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::Truncated(what.to_string()),
        _ => BundleError::Io(e),
    })
}

/// One `read`, retried when interrupted.
fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
