//! Serde helpers that store byte strings as unpadded standard base64 text.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD_NO_PAD.encode(bytes))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = <&str>::deserialize(d)?;
    STANDARD_NO_PAD
        .decode(text)
        .map_err(|_| serde::de::Error::custom("invalid base64"))
}
