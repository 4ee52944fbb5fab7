//! Svix webhook signatures (how Clerk signs its webhooks), verified on
//! aws-lc-rs.
//!
//! The official `svix` crate is not used: besides its verifier it brings an
//! HTTP client (hyper-util's legacy client, hyper-rustls), its own HMAC
//! (`hmac-sha256`, a second crypto implementation beside aws-lc-rs), chrono,
//! rand, uuid and nix, none of which this tree otherwise needs. The scheme is
//! small enough to implement here:
//!
//! - headers `svix-id`, `svix-timestamp` (Unix seconds) and `svix-signature`
//!   (the Standard Webhooks names `webhook-id`, `webhook-timestamp`,
//!   `webhook-signature` are accepted too);
//! - the signed content is `{id}.{timestamp}.{body}`, the body exactly as
//!   received;
//! - HMAC-SHA256 keyed with the secret's bytes (the secret is `whsec_` and
//!   their standard base64), base64 (standard alphabet, padded);
//! - the signature header is a space-separated list of `v1,<base64>`
//!   entries (several during a rotation on Svix's side): any one matching
//!   passes; entries of other versions are ignored;
//! - several secrets may be configured at once (a rotation on our side): any
//!   secret matching passes;
//! - comparisons are constant-time (`aws_lc_rs::constant_time`);
//! - a timestamp more than [`TOLERANCE`] from now, either way, is refused.
//!
//! Tested against the fixed vectors of Svix's own libraries
//! (github.com/svix/svix-webhooks: `go/webhook_test.go` `TestWebhookSign`,
//! `rust/src/webhooks.rs` `test_sign`).

use std::fmt;
use std::time::Duration;

use aws_lc_rs::{constant_time, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

/// Largest difference between a delivery's timestamp and now, either way
/// (Svix's libraries use the same five minutes).
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// What every signing secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Longest message id accepted (Svix's are `msg_` and 27 characters).
pub const MAX_ID_LEN: usize = 256;
/// Most entries of the signature header looked at (Svix sends one, two
/// during its own rotation).
pub const MAX_SIGNATURES: usize = 16;
/// Most configured secrets (rotation needs two).
pub const MAX_SECRETS: usize = 16;
/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// The header names: Svix's, then the Standard Webhooks ones.
const ID_HEADERS: [&str; 2] = ["svix-id", "webhook-id"];
const TIMESTAMP_HEADERS: [&str; 2] = ["svix-timestamp", "webhook-timestamp"];
const SIGNATURE_HEADERS: [&str; 2] = ["svix-signature", "webhook-signature"];

/// One endpoint signing secret, ready to verify with. Its `Debug` shows
/// nothing of the key.
#[derive(Clone)]
pub struct SigningSecret {
    key: hmac::Key,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(redacted)")
    }
}

/// Why a signing secret cannot be used. The messages never contain the
/// secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error(
        "does not start with whsec_; copy the endpoint's Signing Secret from the Clerk dashboard (Webhooks, the endpoint, Signing Secret)"
    )]
    MissingPrefix,
    /// What follows `whsec_` is not standard base64.
    #[error("is not base64 after whsec_; copy the whole Signing Secret from the Clerk dashboard")]
    NotBase64,
    /// Nothing follows `whsec_`.
    #[error("is empty after whsec_")]
    Empty,
}

impl SigningSecret {
    /// Parses `whsec_<base64>` (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A secret from its key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, bytes) }
    }

    /// The tag of `{id}.{timestamp}.{body}`.
    fn tag(&self, id: &str, timestamp: &str, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// The signature header entry Svix would send for this delivery:
    /// `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.tag(id, &timestamp.to_string(), body)))
    }
}

/// Why a delivery's signature was refused. The messages never contain a
/// secret or a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing.
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// A header is not what Svix sends (not ASCII, too long, not a number).
    #[error("the {0} header is malformed")]
    MalformedHeader(&'static str),
    /// No `v1` signature matches any configured secret.
    #[error("no v1 signature of the svix-signature header matches a configured signing secret")]
    NoMatch,
    /// The timestamp is older than [`TOLERANCE`].
    #[error("the delivery's timestamp is {0} s old, more than the 300 s allowed (check the host clock)")]
    TooOld(u64),
    /// The timestamp is further than [`TOLERANCE`] in the future.
    #[error("the delivery's timestamp is {0} s in the future, more than the 300 s allowed (check the host clock)")]
    InFuture(u64),
}

impl SignatureError {
    /// Whether the signature matched but the timestamp is out of tolerance.
    pub fn is_stale(self) -> bool {
        matches!(self, SignatureError::TooOld(_) | SignatureError::InFuture(_))
    }

    /// Whether the headers were missing or malformed (rather than a
    /// signature that does not match).
    pub fn is_malformed(self) -> bool {
        matches!(self, SignatureError::MissingHeader(_) | SignatureError::MalformedHeader(_))
    }
}

/// A delivery whose signature matched, within the tolerance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The message id (`svix-id`), the same on every retry of a message.
    pub id: String,
    /// The delivery's timestamp, Unix seconds.
    pub timestamp: i64,
}

/// The first of `names` present in `headers`, as ASCII text.
fn header<'h>(headers: &'h HeaderMap, names: [&'static str; 2]) -> Result<&'h str, SignatureError> {
    let value = names.iter().find_map(|n| headers.get(*n)).ok_or(SignatureError::MissingHeader(names[0]))?;
    value.to_str().map_err(|_| SignatureError::MalformedHeader(names[0]))
}

/// Checks the delivery's headers and signature against `secrets` (any one
/// matching passes), then its timestamp against `now_unix` (Unix seconds).
pub fn verify(
    secrets: &[SigningSecret],
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
) -> Result<Verified, SignatureError> {
    let id = header(headers, ID_HEADERS)?;
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SignatureError::MalformedHeader(ID_HEADERS[0]));
    }
    let timestamp_text = header(headers, TIMESTAMP_HEADERS)?;
    let timestamp = parse_timestamp(timestamp_text).ok_or(SignatureError::MalformedHeader(TIMESTAMP_HEADERS[0]))?;
    let signatures = header(headers, SIGNATURE_HEADERS)?;

    // Each candidate signature, decoded once; malformed entries and other
    // versions are skipped (Svix's libraries skip them too).
    let candidates: Vec<[u8; TAG_LEN]> = signatures
        .split(' ')
        .filter(|e| !e.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|entry| {
            let (version, encoded) = entry.split_once(',')?;
            if version != "v1" {
                return None;
            }
            STANDARD.decode(encoded).ok()?.try_into().ok()
        })
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    let mut matched = false;
    for secret in secrets.iter().take(MAX_SECRETS) {
        let tag = secret.tag(id, timestamp_text, body);
        for candidate in &candidates {
            // Constant-time in the contents; every pair is compared, so the
            // time does not say which one matched either.
            matched |= constant_time::verify_slices_are_equal(tag.as_ref(), candidate).is_ok();
        }
    }
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    check_timestamp(timestamp, now_unix)?;
    Ok(Verified { id: id.to_owned(), timestamp })
}

/// A Unix time in whole seconds: ASCII digits only (no sign, no space), at
/// most 12 of them.
fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Refuses a timestamp more than [`TOLERANCE`] away from `now`, either way.
fn check_timestamp(timestamp: i64, now: i64) -> Result<(), SignatureError> {
    let tolerance = TOLERANCE.as_secs();
    let delta = now.saturating_sub(timestamp);
    if delta > 0 && delta.unsigned_abs() > tolerance {
        return Err(SignatureError::TooOld(delta.unsigned_abs()));
    }
    if delta < 0 && delta.unsigned_abs() > tolerance {
        return Err(SignatureError::InFuture(delta.unsigned_abs()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Svix's published vector (`go/webhook_test.go`, `TestWebhookSign`;
    /// the same in its JavaScript, Python, Java, Kotlin, C# and PHP tests).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// Svix's Rust library's vector (`rust/src/webhooks.rs`, `test_sign`).
    const RUST_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const RUST_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const RUST_TIMESTAMP: i64 = 1649367553;
    const RUST_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const RUST_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers(names: [&str; 3], id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::HeaderName::from_bytes(names[0].as_bytes()).unwrap(), id.parse().unwrap());
        h.insert(http::HeaderName::from_bytes(names[1].as_bytes()).unwrap(), timestamp.parse().unwrap());
        h.insert(http::HeaderName::from_bytes(names[2].as_bytes()).unwrap(), signature.parse().unwrap());
        h
    }

    fn svix(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        headers(["svix-id", "svix-timestamp", "svix-signature"], id, &timestamp.to_string(), signature)
    }

    fn secret() -> SigningSecret {
        SigningSecret::parse(SECRET).unwrap()
    }

    #[test]
    fn signs_like_svix() {
        assert_eq!(secret().sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert_eq!(SigningSecret::parse(RUST_SECRET).unwrap().sign(RUST_ID, RUST_TIMESTAMP, RUST_BODY), RUST_SIGNATURE);
    }

    #[test]
    fn verifies_svix_vectors_within_the_tolerance() {
        let verified = verify(&[secret()], &svix(ID, TIMESTAMP, SIGNATURE), BODY, TIMESTAMP + 10).unwrap();
        assert_eq!(verified, Verified { id: ID.to_owned(), timestamp: TIMESTAMP });
        let rust = [SigningSecret::parse(RUST_SECRET).unwrap()];
        verify(&rust, &svix(RUST_ID, RUST_TIMESTAMP, RUST_SIGNATURE), RUST_BODY, RUST_TIMESTAMP).unwrap();
        // The Standard Webhooks header names.
        let unbranded =
            headers(["webhook-id", "webhook-timestamp", "webhook-signature"], ID, &TIMESTAMP.to_string(), SIGNATURE);
        verify(&[secret()], &unbranded, BODY, TIMESTAMP).unwrap();
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let listed = format!(
            "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v2,{} {SIGNATURE} v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
            &SIGNATURE[3..]
        );
        verify(&[secret()], &svix(ID, TIMESTAMP, &listed), BODY, TIMESTAMP).unwrap();
        // The right bytes under another version do not count.
        let v2_only = format!("v2,{}", &SIGNATURE[3..]);
        assert_eq!(verify(&[secret()], &svix(ID, TIMESTAMP, &v2_only), BODY, TIMESTAMP), Err(SignatureError::NoMatch));
        for partial in ["v1,", "v1,g0hM9SsE", "v1", "", &SIGNATURE[..8]] {
            assert_eq!(
                verify(&[secret()], &svix(ID, TIMESTAMP, partial), BODY, TIMESTAMP),
                Err(SignatureError::NoMatch),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn any_configured_secret_may_match() {
        let other = SigningSecret::parse(RUST_SECRET).unwrap();
        verify(&[other.clone(), secret()], &svix(ID, TIMESTAMP, SIGNATURE), BODY, TIMESTAMP).unwrap();
        assert_eq!(verify(&[other], &svix(ID, TIMESTAMP, SIGNATURE), BODY, TIMESTAMP), Err(SignatureError::NoMatch));
        assert_eq!(verify(&[], &svix(ID, TIMESTAMP, SIGNATURE), BODY, TIMESTAMP), Err(SignatureError::NoMatch));
    }

    #[test]
    fn any_change_to_id_timestamp_or_body_breaks_it() {
        let s = [secret()];
        assert_eq!(verify(&s, &svix("msg_other", TIMESTAMP, SIGNATURE), BODY, TIMESTAMP), Err(SignatureError::NoMatch));
        assert_eq!(verify(&s, &svix(ID, TIMESTAMP + 1, SIGNATURE), BODY, TIMESTAMP), Err(SignatureError::NoMatch));
        assert_eq!(
            verify(&s, &svix(ID, TIMESTAMP, SIGNATURE), br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        // Re-serialised JSON is another body.
        assert_eq!(
            verify(&s, &svix(ID, TIMESTAMP, SIGNATURE), br#"{"test":2432232314}"#, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn timestamps_beyond_five_minutes_either_way_are_refused() {
        let s = [secret()];
        let at = |now| verify(&s, &svix(ID, TIMESTAMP, SIGNATURE), BODY, now);
        assert!(at(TIMESTAMP + 300).is_ok());
        assert!(at(TIMESTAMP - 300).is_ok());
        assert_eq!(at(TIMESTAMP + 301), Err(SignatureError::TooOld(301)));
        assert_eq!(at(TIMESTAMP - 301), Err(SignatureError::InFuture(301)));
        assert!(at(TIMESTAMP + 301).unwrap_err().is_stale());
    }

    #[test]
    fn missing_or_malformed_headers_are_named() {
        let s = [secret()];
        let mut h = svix(ID, TIMESTAMP, SIGNATURE);
        h.remove("svix-id");
        assert_eq!(verify(&s, &h, BODY, TIMESTAMP), Err(SignatureError::MissingHeader("svix-id")));
        let mut h = svix(ID, TIMESTAMP, SIGNATURE);
        h.remove("svix-signature");
        assert_eq!(verify(&s, &h, BODY, TIMESTAMP), Err(SignatureError::MissingHeader("svix-signature")));
        for bad in ["-1614265330", "1614265330.5", " 1614265330", "soon", "9999999999999"] {
            let h = headers(["svix-id", "svix-timestamp", "svix-signature"], ID, bad, SIGNATURE);
            assert_eq!(
                verify(&s, &h, BODY, TIMESTAMP),
                Err(SignatureError::MalformedHeader("svix-timestamp")),
                "{bad:?}"
            );
        }
        let long = "m".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            verify(&s, &svix(&long, TIMESTAMP, SIGNATURE), BODY, TIMESTAMP),
            Err(SignatureError::MalformedHeader("svix-id"))
        );
        assert!(SignatureError::MissingHeader("svix-id").is_malformed());
    }

    #[test]
    fn secrets_parse_and_never_show() {
        assert_eq!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::MissingPrefix);
        assert_eq!(SigningSecret::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(SigningSecret::parse("whsec_not base64!").unwrap_err(), SecretError::NotBase64);
        assert!(SigningSecret::parse(&format!(" {SECRET}\n")).is_ok());
        let shown = format!("{:?}", secret());
        assert!(!shown.contains("MfKQ"), "{shown}");
        for e in [SecretError::MissingPrefix, SecretError::NotBase64, SecretError::Empty] {
            assert!(!e.to_string().contains("MfKQ"));
        }
    }
}
