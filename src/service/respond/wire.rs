//! Verify's answer for a valid token, encoded straight from the verified
//! token: the bytes prost writes for [`super::valid`], without building
//! (and dropping) a `pb::VerifyResponse` of eleven owned strings on every
//! call. Measured: docs/performance.md. The tests below hold it to prost's
//! own encoding, byte for byte.

use std::sync::Arc;

use prost::Message as _;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::pb;
use crate::verify::VerifiedToken;

/// The answer of a Verify call, as `service::unary` frames it.
#[derive(Debug)]
pub enum VerifyAnswer {
    /// Valid: encoded from the token itself ([`encode_valid`]).
    Valid(Arc<VerifiedToken>),
    /// Any other answer (a rejection), as a message.
    Message(Box<pb::VerifyResponse>),
}

impl From<VerifyAnswer> for pb::VerifyResponse {
    fn from(answer: VerifyAnswer) -> Self {
        match answer {
            VerifyAnswer::Valid(token) => super::valid(&token),
            VerifyAnswer::Message(m) => *m,
        }
    }
}

impl VerifyAnswer {
    /// How many bytes [`VerifyAnswer::encode`] writes.
    pub fn size_hint(&self) -> usize {
        match self {
            VerifyAnswer::Valid(token) => valid_len(token),
            VerifyAnswer::Message(m) => m.encoded_len(),
        }
    }

    /// Writes the answer's `VerifyResponse` (prost's bytes for it).
    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            VerifyAnswer::Valid(token) => encode_valid(token, buf),
            // Into a growing buffer: encoding cannot run out of space.
            VerifyAnswer::Message(m) => m.encode_raw(buf),
        }
    }
}

/// The `Identity` fields of a token, borrowed, in field-number order
/// (absent claims read as empty strings).
pub(super) struct IdentityView<'a> {
    /// Fields 1–8: subject, issuer, session_id, role, authorized_party,
    /// organization id, role and slug.
    pub(super) head: [&'a str; 8],
    /// Fields 9 and 10: issued_at, expires_at (seconds).
    pub(super) times: [Option<i64>; 2],
    /// Fields 11 and 12: key_id, algorithm.
    pub(super) tail: [&'a str; 2],
}

impl<'a> IdentityView<'a> {
    pub(super) fn of(token: &'a VerifiedToken) -> Self {
        let c = &token.claims;
        let text = |v: Option<&'a String>| v.map_or("", String::as_str);
        IdentityView {
            head: [
                text(c.sub.get()),
                &token.issuer,
                text(c.sid.as_ref()),
                text(c.role.get()),
                text(c.azp.get()),
                text(c.org.id.as_ref()),
                text(c.org.role.as_ref()),
                text(c.org.slug.as_ref()),
            ],
            times: [c.iat.get().copied(), c.exp.get().copied()],
            tail: [token.key.kid().unwrap_or_default(), token.algorithm.as_str()],
        }
    }

    fn encoded_len(&self) -> usize {
        let strings = self.head.iter().zip(1..).chain(self.tail.iter().zip(11..)).map(|(s, tag)| string_len(tag, s));
        let times = self.times.iter().zip(9..).map(|(t, tag)| t.map_or(0, |s| message_len(tag, timestamp_len(s))));
        strings.sum::<usize>() + times.sum::<usize>()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        for (s, tag) in self.head.iter().zip(1..) {
            put_string(tag, s, buf);
        }
        for (t, tag) in self.times.iter().zip(9..) {
            if let Some(seconds) = *t {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(timestamp_len(seconds) as u64, buf);
                if seconds != 0 {
                    encode_key(1, WireType::Varint, buf);
                    encode_varint(seconds as u64, buf);
                }
            }
        }
        for (s, tag) in self.tail.iter().zip(11..) {
            put_string(tag, s, buf);
        }
    }
}

/// Writes the valid `VerifyResponse` of `token` (what prost writes for
/// [`super::valid`]).
pub fn encode_valid(token: &VerifiedToken, buf: &mut impl BufMut) {
    let identity = IdentityView::of(token);
    encode_key(1, WireType::Varint, buf);
    encode_varint(1, buf);
    encode_key(2, WireType::Varint, buf);
    encode_varint(pb::Reason::Valid as u64, buf);
    put_string(3, super::VALID_MESSAGE, buf);
    encode_key(4, WireType::LengthDelimited, buf);
    encode_varint(identity.encoded_len() as u64, buf);
    identity.encode(buf);
}

/// The length of what [`encode_valid`] writes.
fn valid_len(token: &VerifiedToken) -> usize {
    let valid = key_len(1) + encoded_len_varint(1);
    let reason = key_len(2) + encoded_len_varint(pb::Reason::Valid as u64);
    valid + reason + string_len(3, super::VALID_MESSAGE) + message_len(4, IdentityView::of(token).encoded_len())
}

/// A `google.protobuf.Timestamp` with whole seconds: its encoded length.
fn timestamp_len(seconds: i64) -> usize {
    if seconds == 0 { 0 } else { key_len(1) + encoded_len_varint(seconds as u64) }
}

/// A length-delimited field of `len` bytes: its encoded length.
fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A proto3 string field (absent when empty): its encoded length.
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { message_len(tag, s.len()) }
}

fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::jwk::{Algorithm, key_from_jwk_json};
    use crate::test_issuer::TestKey;
    use crate::verify::{TokenKind, token};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A token with `payload`'s claims, as the verifier would hand it over.
    fn verified_token(payload: &serde_json::Value, kid: Option<&str>) -> VerifiedToken {
        let mut jwk = TestKey::generate("k", Algorithm::EdDSA).jwk().clone();
        let fields = jwk.as_object_mut().unwrap();
        match kid {
            Some(kid) => fields.insert("kid".into(), kid.into()),
            None => fields.remove("kid"),
        };
        let raw = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        VerifiedToken {
            issuer: Arc::from(payload["iss"].as_str().unwrap()),
            key: Arc::new(key_from_jwk_json(&jwk).unwrap()),
            algorithm: Algorithm::EdDSA,
            kind: TokenKind::Session,
            claims: token::decode(&raw).unwrap().claims,
            payload: payload.to_string().into(),
        }
    }

    /// Claim sets covering present, absent, empty, zero and negative fields.
    fn payloads() -> Vec<serde_json::Value> {
        use serde_json::json;
        vec![
            json!({"iss": "https://clerk.example.com", "sub": "user_2abc", "exp": 1_900_000_000, "iat": 1_899_999_940,
                   "role": "authenticated", "azp": "https://app.example.com", "sid": "sess_123",
                   "o": {"id": "org_1", "rol": "admin", "slg": "acme"}}),
            json!({"iss": "https://clerk.example.com", "sub": "user_2abc", "exp": 1_900_000_000, "role": "authenticated"}),
            json!({"iss": "https://clerk.example.com", "exp": 1_900_000_000, "iat": 0, "role": ""}),
            json!({"iss": "https://clerk.example.com", "exp": -5, "iat": -1, "sub": "ü".repeat(200),
                   "org_id": "org_v1", "org_role": "org:member", "org_slug": "s".repeat(130)}),
        ]
    }

    #[test]
    fn the_valid_answer_is_what_prost_writes() {
        for (i, payload) in payloads().iter().enumerate() {
            for kid in [Some("ins_2abc"), None] {
                let token = verified_token(payload, kid);
                let expected = super::super::valid(&token).encode_to_vec();
                let mut written = Vec::new();
                encode_valid(&token, &mut written);
                assert_eq!(written, expected, "payload {i}, kid {kid:?}");
                let answer = VerifyAnswer::Valid(Arc::new(token));
                assert_eq!(answer.size_hint(), expected.len(), "payload {i}, kid {kid:?}");
                let mut through_answer = Vec::new();
                answer.encode(&mut through_answer);
                assert_eq!(through_answer, expected);
                let token = match answer {
                    VerifyAnswer::Valid(token) => token,
                    VerifyAnswer::Message(_) => unreachable!(),
                };
                assert_eq!(pb::VerifyResponse::decode(&written[..]).unwrap(), super::super::valid(&token));
            }
        }
    }

    #[test]
    fn a_rejection_is_written_as_prost_writes_it() {
        let message = pb::VerifyResponse {
            valid: false,
            reason: pb::Reason::Expired as i32,
            message: "expired".into(),
            ..Default::default()
        };
        let answer = VerifyAnswer::Message(Box::new(message.clone()));
        let mut written = Vec::new();
        answer.encode(&mut written);
        assert_eq!(written, message.encode_to_vec());
        assert_eq!(answer.size_hint(), written.len());
    }

    #[test]
    fn a_valid_answer_converts_to_the_same_message() {
        let token = Arc::new(verified_token(&payloads()[0], Some("ins_2abc")));
        let message: pb::VerifyResponse = VerifyAnswer::Valid(token.clone()).into();
        assert_eq!(message, super::super::valid(&token));
    }
}
