//! `IMAGE_VERSION`: in the running system's os-release, and in a UKI's `.osrel` section
//! (read with the `object` crate, which does the PE parsing).

use std::fs::File;
use std::path::Path;

use object::read::ReadCache;
use object::read::pe::PeFile64;
use object::{Object, ObjectSection};

use crate::bundle::Version;

/// The largest `.osrel` section read.
const MAX_OSREL: u64 = 64 * 1024;

/// The `IMAGE_VERSION` of os-release text (`KEY=value` lines, the value optionally
/// quoted); `None` when it is missing or not a version.
pub(crate) fn image_version(os_release: &str) -> Option<Version> {
    os_release.lines().find_map(|line| {
        let value = line.trim().strip_prefix("IMAGE_VERSION=")?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        value.parse().ok()
    })
}

/// The `IMAGE_VERSION` in the `.osrel` section of the UKI at `path`; `None` when the file
/// is not a PE image, has no such section, or the section names no version.
pub(crate) fn uki_version(path: &Path) -> Option<Version> {
    let file = File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let pe = PeFile64::parse(&cache).ok()?;
    let section = pe.section_by_name(".osrel")?;
    if section.size() > MAX_OSREL {
        return None;
    }
    let data = section.data().ok()?;
    // A section's data is padded to the file alignment with NULs.
    let text = std::str::from_utf8(data).ok()?.trim_end_matches('\0');
    image_version(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_version_is_read_quoted_or_not() {
        let v = |s: &str| image_version(s).map(|v| v.to_string());
        assert_eq!(
            v("ID=debian\nIMAGE_VERSION=0.2.1\n").as_deref(),
            Some("0.2.1")
        );
        assert_eq!(v("IMAGE_VERSION=\"1.0\"").as_deref(), Some("1.0"));
        assert_eq!(v("IMAGE_VERSION='3'").as_deref(), Some("3"));
        assert_eq!(v("VERSION=1\n"), None);
        assert_eq!(v("IMAGE_VERSION=abc"), None);
    }
}
