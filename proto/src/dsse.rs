//! DSSE envelopes (the in-toto / sigstore signing envelope), `FORMAT.md` §4.
//!
//! The signature covers the PAE ("pre-authentication encoding") of the payload type and the
//! payload bytes, never the JSON of the envelope, so re-encoding the JSON cannot change what
//! was signed.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};

use crate::keys::SigningKey;
use crate::statement::Statement;

/// The payload type of a skiff statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.skiff.statement.v1+json";

/// Largest envelope a reader accepts, in bytes.
pub const MAX_ENVELOPE_SIZE: usize = 1 << 20;

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 (standard alphabet, padded) of the payload bytes.
    pub payload: String,
    /// What the payload is: [`PAYLOAD_TYPE`] for skiff.
    pub payload_type: String,
    /// One or more signatures over the PAE.
    pub signatures: Vec<Signature>,
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Hex SHA-256 of the signer's raw public key.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// The envelope cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    /// Larger than [`MAX_ENVELOPE_SIZE`].
    #[error("envelope is {size} bytes, more than the limit of {MAX_ENVELOPE_SIZE}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not the JSON of a DSSE envelope.
    #[error("envelope is not valid DSSE JSON: {0}")]
    Json(String),
    /// A base64 field does not decode.
    #[error("envelope field {field} is not valid base64: {reason}")]
    Base64 {
        /// Which field.
        field: &'static str,
        /// The decoder's message.
        reason: String,
    },
}

/// DSSE v1 pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

const ENCODE: GeneralPurpose = base64::engine::general_purpose::STANDARD;
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(false);
const DECODE_STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const DECODE_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// Decodes base64 in either alphabet, padded or not, as the DSSE spec asks of readers.
pub(crate) fn decode_base64(field: &'static str, text: &str) -> Result<Vec<u8>, DsseError> {
    DECODE_STANDARD
        .decode(text)
        .or_else(|_| DECODE_URL_SAFE.decode(text))
        .map_err(|e| DsseError::Base64 {
            field,
            reason: e.to_string(),
        })
}

impl Envelope {
    /// Signs `payload` with each key.
    pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Self {
        let message = pae(payload_type, payload);
        Self {
            payload: ENCODE.encode(payload),
            payload_type: payload_type.to_owned(),
            signatures: keys
                .iter()
                .map(|key| Signature {
                    keyid: key.public_key().keyid(),
                    sig: ENCODE.encode(key.sign(&message)),
                })
                .collect(),
        }
    }

    /// Signs a statement.
    pub fn sign_statement(statement: &Statement, keys: &[&SigningKey]) -> Self {
        Self::sign(PAYLOAD_TYPE, &statement.to_payload(), keys)
    }

    /// Parses envelope JSON (at most [`MAX_ENVELOPE_SIZE`] bytes).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DsseError> {
        if bytes.len() > MAX_ENVELOPE_SIZE {
            return Err(DsseError::TooLarge { size: bytes.len() });
        }
        serde_json::from_slice(bytes).map_err(|e| DsseError::Json(e.to_string()))
    }

    /// Pretty JSON with a trailing newline, as written to `<sha256>.dsse.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("envelope serializes");
        out.push(b'\n');
        out
    }

    /// The decoded payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DsseError> {
        decode_base64("payload", &self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn envelope_json_uses_dsse_field_names() {
        let key = SigningKey::generate().unwrap();
        let env = Envelope::sign(PAYLOAD_TYPE, b"{}", &[&key]);
        let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(json["payloadType"], PAYLOAD_TYPE);
        assert_eq!(json["payload"], "e30=");
        assert_eq!(json["signatures"][0]["keyid"], key.public_key().keyid());
        assert_eq!(Envelope::from_json(&env.to_json()).unwrap(), env);
    }

    #[test]
    fn base64_accepts_both_alphabets_and_missing_padding() {
        assert_eq!(decode_base64("f", "e30=").unwrap(), b"{}");
        assert_eq!(decode_base64("f", "e30").unwrap(), b"{}");
        assert_eq!(decode_base64("f", "-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_base64("f", "!!!").is_err());
    }
}
