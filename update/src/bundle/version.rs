//! Image versions: dot-separated non-negative integers, compared component by component.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The most components a version may have.
const MAX_COMPONENTS: usize = 8;

/// An image version (`IMAGE_VERSION` in os-release, `version` in a manifest): `1.10.0`.
///
/// Ordered component by component, a missing component counting as 0, so `1.10.0` >
/// `1.9.3` and `1.2` == `1.2.0`. Printed with its components as numbers (`01.2` prints
/// as `1.2`).
#[derive(Clone, Debug)]
pub struct Version(Vec<u64>);

/// Why a string is not a [`Version`].
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a version: 1 to 8 dot-separated numbers (1.10.0), each at most 20 digits")]
pub struct VersionError(String);

impl Version {
    /// The components, most significant first.
    pub fn components(&self) -> &[u64] {
        &self.0
    }

    /// The components with trailing zeros dropped: the same for every spelling of one
    /// version.
    fn significant(&self) -> &[u64] {
        let len = self.0.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        &self.0[..len]
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError(s.chars().take(40).collect());
        let mut components = Vec::new();
        for part in s.split('.') {
            if components.len() == MAX_COMPONENTS
                || part.is_empty()
                || !part.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(err());
            }
            components.push(part.parse::<u64>().map_err(|_| err())?);
        }
        Ok(Version(components))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        let len = a.len().max(b.len());
        (0..len)
            .map(|i| {
                let x = a.get(i).copied().unwrap_or(0);
                let y = b.get(i).copied().unwrap_or(0);
                x.cmp(&y)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().expect("a version")
    }

    #[test]
    fn versions_compare_by_component_with_missing_ones_as_zero() {
        assert!(v("1.10.0") > v("1.9.3"));
        assert!(v("0.2.0") > v("0.1.99"));
        assert_eq!(v("1.2"), v("1.2.0.0"));
        assert!(v("1.2.0.1") > v("1.2"));
        assert_eq!(v("01.2").to_string(), "1.2");
    }

    #[test]
    fn bad_versions_are_refused() {
        for bad in [
            "",
            "1.",
            ".1",
            "1..2",
            "1.a",
            "-1",
            "+1",
            "1.2.3.4.5.6.7.8.9",
            "1 .2",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert!("99999999999999999999999".parse::<Version>().is_err());
    }
}
