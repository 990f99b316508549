//! The 128-bit request id that ties feature frames to a language-server request.

use std::fmt;
use std::str::FromStr;

/// Identifies one request across the gateway, vision server and language server.
///
/// On the wire it is 16 little-endian bytes in every frame header; in gRPC messages and logs it is
/// written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u128);

impl RequestId {
    /// A fresh random id (128 random bits, so collisions are not a practical concern).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id's wire form.
    pub fn to_le_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// Reads the id from its wire form.
    pub fn from_le_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_le_bytes(bytes))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// The text was not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request id must be 32 hex digits, got {0:?}")]
pub struct ParseRequestIdError(pub String);

impl FromStr for RequestId {
    type Err = ParseRequestIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseRequestIdError(s.chars().take(64).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| ParseRequestIdError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_wire_forms_round_trip() {
        let id = RequestId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        assert_eq!(id.to_string(), "0123456789abcdeffedcba9876543210");
        assert_eq!(id.to_string().parse::<RequestId>(), Ok(id));
        assert_eq!(RequestId::from_le_bytes(id.to_le_bytes()), id);
    }

    #[test]
    fn rejects_bad_text() {
        assert!("xyz".parse::<RequestId>().is_err());
        assert!(
            "0123456789abcdeffedcba987654321g"
                .parse::<RequestId>()
                .is_err()
        );
        assert!(
            "+123456789abcdeffedcba9876543210"
                .parse::<RequestId>()
                .is_err()
        );
    }
}
