//! Decoding a compact JWS: size and shape checks, base64url, the header
//! fields we use (and nothing else), and the payload as a JSON object.
//!
//! Header parameters that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are
//! never read: they are not even deserialized.

use base64::DecodeSliceError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

use super::claims::Claims;
use super::json;
use super::rejection::{self as r, Rejection};
use crate::keys::jwk::{AlgClass, Algorithm};

/// Largest token accepted, in bytes, after trimming.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest decoded signature (an 8192-bit RSA signature).
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// Decoded headers up to this size are decoded on the stack.
const HEADER_STACK_BYTES: usize = 512;

/// Clerk's `cat` (category) header values (`@clerk/backend` `jwtCategories.ts`).
pub mod category {
    /// A session token.
    pub const SESSION: &str = "cl_B7d4PD111AAA";
    /// A JWT-template token.
    pub const JWT_TEMPLATE: &str = "cl_B7d4PD222AAA";
    /// A machine-to-machine token.
    pub const MACHINE: &str = "cl_B7d4PD333AAA";
    /// "Ignore": verifiers treat it like an absent category.
    pub const IGNORE: &str = "cl_I7d4PD111III";
}

/// What kind of token the header and subject say this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A Clerk session token (`cat` session, ignore or absent; `typ` JWT or absent).
    Session,
    /// A Clerk JWT-template token (`cat` `cl_B7d4PD222AAA`).
    JwtTemplate,
    /// A Clerk machine (M2M) token (`cat` `cl_B7d4PD333AAA`, or `sub` starting `mch_`).
    Machine,
    /// An OAuth access token (`typ: at+jwt`).
    OAuth,
    /// A `cat` or `typ` this service does not know: never accepted.
    Unrecognized,
}

impl TokenKind {
    /// The name used in flags and config (`session`, `jwt-template`, `machine`, `oauth`).
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::JwtTemplate => "jwt-template",
            TokenKind::Machine => "machine",
            TokenKind::OAuth => "oauth",
            TokenKind::Unrecognized => "unrecognized",
        }
    }
}

impl std::str::FromStr for TokenKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "session" => Ok(TokenKind::Session),
            "jwt-template" => Ok(TokenKind::JwtTemplate),
            "machine" => Ok(TokenKind::Machine),
            "oauth" => Ok(TokenKind::OAuth),
            other => Err(format!("unknown token kind {other:?}; choose from session, jwt-template, machine, oauth")),
        }
    }
}

/// The header members we read or refuse. Each is kept raw so that a
/// member that is present with the wrong type (`null` included) is told
/// apart from an absent one; every other member is skipped (and was checked
/// by [`json::check`]).
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default, deserialize_with = "json::present")]
    alg: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    kid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    typ: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    cat: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    crit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    b64: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    enc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "json::present")]
    zip: Option<&'a RawValue>,
}

/// A header member that must be a string when present.
fn header_string(v: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, Rejection> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(s) = serde_json::from_str::<&str>(v.get()) {
        return Ok(Some(Cow::Borrowed(s)));
    }
    serde_json::from_str::<String>(v.get()).map(|s| Some(Cow::Owned(s))).map_err(|_| r::HEADER_NOT_OBJECT)
}

/// The header fields we use.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// `alg`, classified; the original text is kept for messages.
    pub alg: Algorithm,
    /// `kid`.
    pub kid: Option<Box<str>>,
    /// Kind implied by `typ` and `cat` (the `mch_` subject rule is applied later).
    pub kind: TokenKind,
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Decoded<'t> {
    /// `base64url(header) "." base64url(payload)`: the signed bytes.
    pub signing_input: &'t [u8],
    /// The header fields we use.
    pub header: Header,
    /// The decoded payload, exactly as signed (checked by [`json::check`]).
    pub payload: String,
    /// The claims we read, parsed from `payload` (not trusted until the
    /// signature verifies).
    pub claims: Claims,
    signature: [u8; MAX_SIGNATURE_BYTES],
    signature_len: usize,
}

impl Decoded<'_> {
    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature[..self.signature_len]
    }
}

/// Strips an optional `Bearer ` scheme (any case) and surrounding spaces.
pub fn strip_bearer(raw: &str) -> &str {
    let t = raw.trim();
    match t.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => t[7..].trim(),
        _ => t,
    }
}

/// Splits and decodes a compact JWS. Rejections here are MALFORMED, or
/// ALGORITHM_NOT_ALLOWED for `none`, HMAC and unknown algorithms (for an
/// HMAC token we peek at `iss`, only to word the sentence for a token
/// minted by Supabase Auth).
pub fn decode(token: &str) -> Result<Decoded<'_>, Rejection> {
    let (h64, p64, s64) = split(token)?;
    let bytes = token.as_bytes();
    let d2 = h64.len() + 1 + p64.len();

    // Headers are small: decode on the stack, on the heap only if large.
    let mut header_stack = [0u8; HEADER_STACK_BYTES];
    let header_heap: Vec<u8>;
    let header_bytes: &[u8] = match URL_SAFE_NO_PAD.decode_slice(h64, &mut header_stack) {
        Ok(n) => &header_stack[..n],
        Err(DecodeSliceError::OutputSliceTooSmall) => {
            header_heap = URL_SAFE_NO_PAD.decode(h64).map_err(|_| r::BAD_BASE64)?;
            &header_heap
        }
        Err(DecodeSliceError::DecodeError(_)) => return Err(r::BAD_BASE64),
    };
    let header_text = json::check(header_bytes).map_err(|p| r::not_strict_json(r::Part::Header, &p))?;
    let raw: RawHeader<'_> = serde_json::from_str(header_text).map_err(|_| r::HEADER_NOT_OBJECT)?;
    if raw.crit.is_some() {
        return Err(r::CRIT);
    }
    if raw.enc.is_some() {
        return Err(r::JWE_ENC);
    }
    if raw.zip.is_some() {
        return Err(r::JWE_ZIP);
    }
    if raw.b64.is_some() {
        return Err(r::B64);
    }
    let alg_name = header_string(raw.alg)?.ok_or(r::HEADER_NOT_OBJECT)?;
    let kid = header_string(raw.kid)?;
    let typ = header_string(raw.typ)?;
    let cat = header_string(raw.cat)?;
    let payload = String::from_utf8(decode_exact(p64)?)
        .map_err(|_| r::not_strict_json(r::Part::Payload, &json::Problem::NotUtf8))?;
    json::check_text(&payload).map_err(|p| r::not_strict_json(r::Part::Payload, &p))?;
    // Parsed once, here; nothing in it is trusted until the signature verifies.
    let claims = Claims::parse(payload.as_bytes()).ok_or(r::PAYLOAD_NOT_OBJECT)?;
    let mut signature = [0u8; MAX_SIGNATURE_BYTES];
    if s64.len() > (MAX_SIGNATURE_BYTES * 4).div_ceil(3) {
        return Err(r::BAD_BASE64);
    }
    let signature_len = URL_SAFE_NO_PAD.decode_slice(s64, &mut signature).map_err(|_| r::BAD_BASE64)?;

    let alg = match Algorithm::classify(&alg_name) {
        AlgClass::Supported(a) => a,
        AlgClass::None => return Err(r::ALG_NONE),
        AlgClass::Symmetric => {
            let supabase = claims.iss.get().is_some_and(|iss| r::is_supabase_auth_issuer(iss));
            return Err(r::alg_symmetric(&alg_name, supabase));
        }
        AlgClass::Unknown => return Err(r::alg_unknown(&alg_name)),
    };
    let kid = kid.map(|k| Box::<str>::from(k.as_ref()));
    let kind = kind_from_header(typ.as_deref(), cat.as_deref());

    Ok(Decoded {
        signing_input: &bytes[..d2],
        header: Header { alg, kid, kind },
        payload,
        claims,
        signature,
        signature_len,
    })
}

/// Decodes unpadded base64url into a buffer of exactly the decoded size
/// (so that it becomes a `Box<str>` without reallocating).
fn decode_exact(b64: &str) -> Result<Vec<u8>, Rejection> {
    let len = b64.len() / 4 * 3
        + match b64.len() % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        };
    let mut out = vec![0u8; len];
    let n = URL_SAFE_NO_PAD.decode_slice(b64, &mut out).map_err(|_| r::BAD_BASE64)?;
    out.truncate(n);
    Ok(out)
}

/// The size and shape checks every input passes first: not empty, at most
/// [`MAX_TOKEN_BYTES`], exactly three dot-separated parts, the first two
/// non-empty. Returns the three (still encoded) parts.
fn split(token: &str) -> Result<(&str, &str, &str), Rejection> {
    if token.is_empty() {
        return Err(r::EMPTY);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(r::TOO_LARGE);
    }
    // `str::find` on an ASCII char is a word-at-a-time memchr.
    let d1 = token.find('.').ok_or(r::NOT_THREE_PARTS)?;
    let d2 = token[d1 + 1..].find('.').map(|i| d1 + 1 + i).ok_or(r::NOT_THREE_PARTS)?;
    if token[d2 + 1..].contains('.') {
        return Err(r::NOT_THREE_PARTS);
    }
    let (h64, p64, s64) = (&token[..d1], &token[d1 + 1..d2], &token[d2 + 1..]);
    if h64.is_empty() || p64.is_empty() {
        return Err(r::NOT_THREE_PARTS);
    }
    Ok((h64, p64, s64))
}

/// A token split and base64url-decoded, nothing else checked: for
/// `clerk-introspect inspect`, which must show (and explain) even what
/// [`decode`] refuses, such as an HS256 token. The same size and shape
/// bounds as [`decode`] apply. The signature is only measured, never kept.
#[derive(Debug)]
pub struct RawParts {
    /// The decoded header bytes.
    pub header: Vec<u8>,
    /// The decoded payload bytes.
    pub payload: Vec<u8>,
    /// Length of the decoded signature.
    pub signature_len: usize,
}

/// Splits and base64url-decodes a token without interpreting it (see
/// [`RawParts`]).
pub fn decode_raw(token: &str) -> Result<RawParts, Rejection> {
    let (h64, p64, s64) = split(token)?;
    let header = URL_SAFE_NO_PAD.decode(h64).map_err(|_| r::BAD_BASE64)?;
    let payload = URL_SAFE_NO_PAD.decode(p64).map_err(|_| r::BAD_BASE64)?;
    if s64.len() > (MAX_SIGNATURE_BYTES * 4).div_ceil(3) {
        return Err(r::BAD_BASE64);
    }
    let mut scratch = [0u8; MAX_SIGNATURE_BYTES];
    let signature_len = URL_SAFE_NO_PAD.decode_slice(s64, &mut scratch).map_err(|_| r::BAD_BASE64)?;
    Ok(RawParts { header, payload, signature_len })
}

/// The token kind that the `typ` and `cat` header values name.
pub fn kind_from_header(typ: Option<&str>, cat: Option<&str>) -> TokenKind {
    if let Some(t) = typ {
        let t = t.strip_prefix("application/").unwrap_or(t);
        if t.eq_ignore_ascii_case("at+jwt") {
            return TokenKind::OAuth;
        }
        if !t.eq_ignore_ascii_case("jwt") {
            return TokenKind::Unrecognized;
        }
    }
    match cat {
        None | Some(category::SESSION) | Some(category::IGNORE) => TokenKind::Session,
        Some(category::JWT_TEMPLATE) => TokenKind::JwtTemplate,
        Some(category::MACHINE) => TokenKind::Machine,
        Some(_) => TokenKind::Unrecognized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Reason;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    fn reason(t: &str) -> Reason {
        decode(t).map(|_| Reason::Valid).unwrap_or_else(|r| r.reason)
    }

    #[test]
    fn bearer_prefix_any_case() {
        assert_eq!(strip_bearer("  Bearer abc "), "abc");
        assert_eq!(strip_bearer("bEaReR   abc"), "abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bearerabc"), "Bearerabc");
        assert_eq!(strip_bearer("Basic abc"), "Basic abc");
    }

    #[test]
    fn malformed_inputs() {
        let ok_payload = r#"{"sub":"user_1"}"#;
        let cases: Vec<(String, Reason)> = vec![
            (String::new(), Reason::Malformed),
            ("a.b".into(), Reason::Malformed),
            ("a.b.c.d".into(), Reason::Malformed),
            ("..".into(), Reason::Malformed),
            (format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64(ok_payload)), Reason::Valid),
            (format!("{}=.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(ok_payload)), Reason::Malformed),
            (format!("!!.{}.c2ln", b64(ok_payload)), Reason::Malformed),
            (tok("[]", ok_payload), Reason::Malformed),
            (tok("not json", ok_payload), Reason::Malformed),
            (tok(r#"{"alg":5}"#, ok_payload), Reason::Malformed),
            (tok(r#"{"kid":"a"}"#, ok_payload), Reason::Malformed),
            (tok(r#"{"alg":"RS256","kid":7}"#, ok_payload), Reason::Malformed),
            (tok(r#"{"alg":"RS256","crit":["exp"]}"#, ok_payload), Reason::Malformed),
            (tok(r#"{"alg":"RS256","crit":[]}"#, ok_payload), Reason::Malformed),
            (tok(r#"{"alg":"RS256"}"#, "[1]"), Reason::Malformed),
            (tok(r#"{"alg":"RS256"}"#, "\"str\""), Reason::Malformed),
            (tok(r#"{"alg":"RS256","alg":"RS256"}"#, ok_payload), Reason::Malformed),
            ("x".repeat(MAX_TOKEN_BYTES + 1), Reason::Malformed),
            (tok(r#"{"alg":"none"}"#, ok_payload), Reason::AlgorithmNotAllowed),
            (tok(r#"{"alg":"HS256"}"#, ok_payload), Reason::AlgorithmNotAllowed),
            (tok(r#"{"alg":"ES512"}"#, ok_payload), Reason::AlgorithmNotAllowed),
            (
                tok(r#"{"alg":"RS256","jku":"https://evil","x5u":"https://evil","jwk":{},"x5c":["AA"]}"#, ok_payload),
                Reason::Valid,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(reason(&t), want, "token {t:?}");
        }
    }

    fn tok_bytes(header: &[u8], payload: &[u8]) -> String {
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload), b64("sig"))
    }

    /// Finding 4 of issue 17: what RFC 7515 / 7516 / 7797 / 8259 make
    /// invalid is MALFORMED, never a decision about a key.
    #[test]
    fn strict_jose_parsing() {
        let p = r#"{"sub":"user_1"}"#;
        let h = r#"{"alg":"RS256","kid":"k"}"#;
        let cases: Vec<(&str, String)> = vec![
            ("non-UTF-8 in an unknown header member", tok_bytes(b"{\"alg\":\"RS256\",\"x\":\"\xff\"}", p.as_bytes())),
            ("non-UTF-8 in the payload", tok_bytes(h.as_bytes(), b"{\"sub\":\"user_1\",\"x\":\"\xff\"}")),
            ("overlong UTF-8 in the header", tok_bytes(b"{\"alg\":\"RS256\",\"x\":\"\xc0\xaf\"}", p.as_bytes())),
            ("kid null", tok(r#"{"alg":"RS256","kid":null}"#, p)),
            ("kid an object", tok(r#"{"alg":"RS256","kid":{}}"#, p)),
            ("alg null", tok(r#"{"alg":null}"#, p)),
            ("typ null", tok(r#"{"alg":"RS256","typ":null}"#, p)),
            ("cat number", tok(r#"{"alg":"RS256","cat":1}"#, p)),
            ("crit null", tok(r#"{"alg":"RS256","crit":null}"#, p)),
            ("JWE enc", tok(r#"{"alg":"RS256","enc":"A256GCM"}"#, p)),
            ("JWE zip", tok(r#"{"alg":"RS256","zip":"DEF"}"#, p)),
            ("b64 false", tok(r#"{"alg":"RS256","b64":false}"#, p)),
            ("b64 false with crit", tok(r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#, p)),
            ("b64 true", tok(r#"{"alg":"RS256","b64":true}"#, p)),
            ("duplicate unknown header member", tok(r#"{"alg":"RS256","x":1,"x":2}"#, p)),
            ("duplicate alg through an escape", tok(r#"{"alg":"RS256","al\u0067":"ES256"}"#, p)),
            ("duplicate nested header member", tok(r#"{"alg":"RS256","jwk":{"kty":"RSA","kty":"EC"}}"#, p)),
            ("duplicate unknown claim", tok(h, r#"{"sub":"user_1","x":1,"x":2}"#)),
            ("duplicate nested claim", tok(h, r#"{"sub":"user_1","m":{"a":1,"a":2}}"#)),
            ("lone surrogate in a claim", tok(h, r#"{"sub":"user_1","x":"\ud800"}"#)),
            ("lone surrogate in the header", tok(r#"{"alg":"RS256","x":"\udc00"}"#, p)),
            ("number too large for a double", tok(h, r#"{"sub":"user_1","x":1e400}"#)),
            ("header not an object", tok("\"RS256\"", p)),
            ("header null", tok("null", p)),
            ("header with trailing text", tok(r#"{"alg":"RS256"} x"#, p)),
            ("padding on the payload", format!("{}.{}=.{}", b64(h), b64(r#"{"sub":"user_1","a":1}"#), b64("sig"))),
            ("padding on the signature", format!("{}.{}.{}=", b64(h), b64(p), b64("sig!"))),
            ("non-canonical trailing bits", format!("{}.{}.{}", b64(h), b64(p), "c2lnB")),
            (
                "whitespace inside the header part",
                format!("{} {}.{}.{}", &b64(h)[..4], &b64(h)[4..], b64(p), b64("sig")),
            ),
            ("standard base64 alphabet", format!("{}.{}.{}", b64(h), b64(p), "+/+/")),
        ];
        let mut wrong = Vec::new();
        for (what, t) in &cases {
            match decode(t) {
                Ok(_) => wrong.push(format!("{what}: decoded")),
                Err(e) if e.reason != Reason::Malformed => wrong.push(format!("{what}: {e}")),
                Err(e) => assert!(!e.message.contains(t.as_str()), "{what}: the message quotes the token"),
            }
        }
        assert!(wrong.is_empty(), "should be MALFORMED:\n{}", wrong.join("\n"));
        // What stays valid: escapes, numbers, whitespace and Unicode in JSON.
        let fine = [
            tok("{ \"alg\" : \"RS\\u0032\\u00356\" ,\n\"kid\":\"k\"}", p),
            tok(h, r#"{"sub":"user_1","n":[1e2,1.0,-0,123456789012345678901234567890],"s":"\ud83d\ude00 é ✓"}"#),
            tok(r#"{"alg":"RS256","jku":"https://evil","x5u":"https://evil","jwk":{},"x5c":["AA"]}"#, p),
        ];
        for t in &fine {
            decode(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
        assert_eq!(decode(&fine[0]).unwrap().header.alg, Algorithm::RS256);
    }

    #[test]
    fn hmac_message_explains_the_deprecated_setup() {
        let err = decode(&tok(r#"{"alg":"HS256"}"#, r#"{"iss":"https://x.clerk.accounts.dev"}"#)).unwrap_err();
        assert!(err.message.contains("deprecated"), "{}", err.message);
        let err = decode(&tok(r#"{"alg":"HS256"}"#, r#"{"iss":"https://abc.supabase.co/auth/v1"}"#)).unwrap_err();
        assert!(err.message.contains("Supabase Auth"), "{}", err.message);
    }

    #[test]
    fn kinds_from_header() {
        assert_eq!(kind_from_header(None, None), TokenKind::Session);
        assert_eq!(kind_from_header(Some("JWT"), Some(category::SESSION)), TokenKind::Session);
        assert_eq!(kind_from_header(Some("jwt"), Some(category::IGNORE)), TokenKind::Session);
        assert_eq!(kind_from_header(None, Some(category::JWT_TEMPLATE)), TokenKind::JwtTemplate);
        assert_eq!(kind_from_header(None, Some(category::MACHINE)), TokenKind::Machine);
        assert_eq!(kind_from_header(Some("at+jwt"), None), TokenKind::OAuth);
        assert_eq!(kind_from_header(Some("application/at+jwt"), None), TokenKind::OAuth);
        assert_eq!(kind_from_header(Some("JOSE"), None), TokenKind::Unrecognized);
        assert_eq!(kind_from_header(None, Some("cl_other")), TokenKind::Unrecognized);
    }

    #[test]
    fn large_headers_and_every_payload_length_decode() {
        let big = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(2000));
        let t = tok(&big, r#"{"a":1}"#);
        let d = decode(&t).unwrap();
        assert_eq!(d.header.kid.as_deref().map(str::len), Some(2000));
        for n in 0..40 {
            let payload = format!(r#"{{"a":"{}"}}"#, "x".repeat(n));
            let t = tok(r#"{"alg":"RS256"}"#, &payload);
            let d = decode(&t).unwrap();
            assert_eq!(d.payload, payload);
            assert_eq!(d.payload.capacity(), d.payload.len(), "exactly sized");
        }
        // A payload part of 4n+1 characters is never valid base64url.
        let t = format!("{}.{}x.{}", b64(r#"{"alg":"RS256"}"#), b64(r#"{"a":1}"#), b64("sig"));
        assert_eq!(reason(&t), Reason::Malformed);
    }

    #[test]
    fn decodes_the_signed_parts() {
        let t = tok(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, r#"{"a":1}"#);
        let d = decode(&t).unwrap();
        assert_eq!(d.header, Header { alg: Algorithm::ES256, kid: Some("k1".into()), kind: TokenKind::Session });
        assert_eq!(d.payload, r#"{"a":1}"#);
        assert_eq!(d.signature(), b"sig");
        assert_eq!(d.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }
}
