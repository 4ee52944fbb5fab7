//! Why a token was refused: a [`Reason`] from the contract and one sentence
//! for a person. Sentences never contain the token; values taken from an
//! unverified token (kid, iss, azp, ...) are truncated and escaped.

use std::borrow::Cow;
use std::fmt;

use super::json;
use crate::keys::jwk::truncate;
use crate::revocation::index::{Kind, Refusal};

/// The contract's reasons (the subset a rejection can carry).
pub use crate::pb::Reason;

/// Longest slice of a token-supplied value quoted in a message.
const QUOTE_MAX: usize = 80;

/// A refused token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The contract's reason.
    pub reason: Reason,
    /// One sentence for a person: what is wrong, and how to fix it where
    /// it is a known misconfiguration.
    pub message: Cow<'static, str>,
}

impl Rejection {
    /// A rejection with a fixed sentence.
    pub const fn new(reason: Reason, message: &'static str) -> Self {
        Self { reason, message: Cow::Borrowed(message) }
    }

    /// A rejection with a composed sentence.
    pub fn with(reason: Reason, message: String) -> Self {
        Self { reason, message: Cow::Owned(message) }
    }

    /// The reason's contract name, e.g. `REASON_EXPIRED`.
    pub fn reason_name(&self) -> &'static str {
        self.reason.as_str_name()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str_name(), self.message)
    }
}

impl std::error::Error for Rejection {}

/// A token-supplied value, safe to quote: truncated, control characters escaped.
pub(crate) fn quote(value: &str) -> String {
    format!("\"{}\"", truncate(value, QUOTE_MAX))
}

// === fixed sentences ===

pub(crate) const EMPTY: Rejection = Rejection::new(Reason::Malformed, "No token was given.");
pub(crate) const TOO_LARGE: Rejection =
    Rejection::new(Reason::Malformed, "The token is larger than 16 KiB; a Clerk session token is about 1 KiB.");
pub(crate) const NOT_THREE_PARTS: Rejection = Rejection::new(
    Reason::Malformed,
    "The token is not a compact JWS: it must be three base64url parts separated by two dots.",
);
pub(crate) const BAD_BASE64: Rejection =
    Rejection::new(Reason::Malformed, "The token is not a compact JWS: a part is not valid unpadded base64url.");
pub(crate) const HEADER_NOT_OBJECT: Rejection = Rejection::new(
    Reason::Malformed,
    "The token's header is not a JSON object with a string \"alg\" (and, where present, string \"kid\", \"typ\" and \"cat\").",
);
pub(crate) const PAYLOAD_NOT_OBJECT: Rejection =
    Rejection::new(Reason::Malformed, "The token's payload is not a JSON object.");
pub(crate) const JWE_ENC: Rejection = Rejection::new(
    Reason::Malformed,
    "The token's header has \"enc\", a member of encrypted tokens (JWE, RFC 7516); this service verifies signed tokens (JWS) only, and a header that is both is ambiguous.",
);
pub(crate) const JWE_ZIP: Rejection = Rejection::new(
    Reason::Malformed,
    "The token's header has \"zip\", which only encrypted tokens (JWE) may carry (RFC 7516 section 4.1.3); a signed token's payload is never compressed.",
);
pub(crate) const B64: Rejection = Rejection::new(
    Reason::Malformed,
    "The token's header has \"b64\" (RFC 7797 unencoded payload), which a JWT must not use; Clerk never sets it.",
);
pub(crate) const CRIT: Rejection = Rejection::new(
    Reason::Malformed,
    "The token's header has a \"crit\" parameter naming extensions this service does not implement, so it must be rejected (RFC 7515 section 4.1.11).",
);
pub(crate) const ALG_NONE: Rejection = Rejection::new(
    Reason::AlgorithmNotAllowed,
    "The token is unsigned (alg \"none\"); Clerk signs session tokens with asymmetric keys, and unsigned tokens are never accepted.",
);
pub(crate) const NO_ISSUER: Rejection = Rejection::new(
    Reason::UntrustedIssuer,
    "The token has no \"iss\" claim (or it is not a string), so its issuer cannot be trusted.",
);

// === composed sentences ===

/// Which part of a token a sentence is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The JOSE header.
    Header,
    /// The claims.
    Payload,
}

/// A header or payload that breaks the rules of [`json::check`].
pub(crate) fn not_strict_json(part: Part, problem: &json::Problem) -> Rejection {
    let name = match part {
        Part::Header => "header",
        Part::Payload => "payload",
    };
    let msg = match problem {
        json::Problem::NotUtf8 => format!(
            "The token's {name} is not valid UTF-8, which the JSON of a JOSE token must be (RFC 7515 section 4, RFC 8259 section 8.1)."
        ),
        json::Problem::NotJson(what) => format!("The token's {name} is not strict JSON: it has {what}."),
        json::Problem::TooDeep if part == Part::Payload => format!(
            "The token's claims nest deeper than {} levels of objects and arrays, more than this service accepts (standard protobuf clients cannot decode such claims).",
            json::MAX_DEPTH
        ),
        json::Problem::TooDeep => {
            format!("The token's header nests deeper than {} levels of objects and arrays.", json::MAX_DEPTH)
        }
        json::Problem::Duplicate(member) => format!(
            "The token's {name} has the member name {} twice; a reader may take either value (RFC 7515 section 4, RFC 7519 section 4), so the token is refused.",
            quote(member)
        ),
    };
    Rejection::with(Reason::Malformed, msg)
}

pub(crate) fn alg_symmetric(alg: &str, supabase_issuer: bool) -> Rejection {
    let alg = truncate(alg, 8);
    let msg = if supabase_issuer {
        format!(
            "The token is signed with {alg} by Supabase Auth's legacy JWT secret, not by Clerk; with Clerk as a third-party issuer no secret is ever shared or created, and only Clerk's asymmetrically signed session tokens are accepted."
        )
    } else {
        format!(
            "The token is signed with {alg}, a shared secret: that is the deprecated Clerk JWT-template / Supabase JWT-secret setup; Clerk signs session tokens with asymmetric keys (RS256) verified through its public JWKS, and no secret is ever shared."
        )
    };
    Rejection::with(Reason::AlgorithmNotAllowed, msg)
}

pub(crate) fn alg_unknown(alg: &str) -> Rejection {
    Rejection::with(
        Reason::AlgorithmNotAllowed,
        format!(
            "The token's algorithm {} is not one this service verifies (RS256/384/512, PS256/384/512, ES256/384, EdDSA).",
            quote(alg)
        ),
    )
}

pub(crate) fn alg_not_in_allow_list(alg: &str, allowed: impl fmt::Display) -> Rejection {
    Rejection::with(
        Reason::AlgorithmNotAllowed,
        format!("The token's algorithm {alg} is not allowed for its issuer (allowed: {allowed})."),
    )
}

pub(crate) fn alg_key_mismatch(alg: &str, kid: Option<&str>, key: &str, jwk_alg: Option<&str>) -> Rejection {
    let kid = kid.map(quote).unwrap_or_else(|| "(none)".into());
    let msg = match jwk_alg {
        Some(j) => format!(
            "The token says {alg}, but its key {kid} is published for {j} only; the algorithm must match the key, never just the token's header."
        ),
        None => format!("The token says {alg}, but its key {kid} is an {key} key, which cannot verify {alg}."),
    };
    Rejection::with(Reason::AlgorithmNotAllowed, msg)
}

pub(crate) fn untrusted_issuer(iss: &str) -> Rejection {
    if is_supabase_auth_issuer(iss) {
        return Rejection::with(
            Reason::UntrustedIssuer,
            format!(
                "The token was minted by Supabase Auth ({}), not by Clerk; this service trusts only the configured Clerk issuers, so send the Clerk session token (from Clerk's getToken()) instead.",
                quote(iss)
            ),
        );
    }
    Rejection::with(
        Reason::UntrustedIssuer,
        format!(
            "The token's issuer {} is not one of the configured issuers; the match is exact (scheme, host, no trailing slash).",
            quote(iss)
        ),
    )
}

pub(crate) fn unknown_kid(kid: &str, issuer: &str) -> Rejection {
    Rejection::with(
        Reason::UnknownKey,
        format!(
            "No key {} is published by {}, even after a fresh fetch; a Clerk kid is the instance id, so this is usually a token from another Clerk instance (development vs production).",
            quote(kid),
            quote(issuer)
        ),
    )
}

pub(crate) fn no_kid_ambiguous(issuer: &str, alg: &str) -> Rejection {
    Rejection::with(
        Reason::UnknownKey,
        format!(
            "The token has no kid and {} does not publish exactly one {alg} key, so no key can be chosen; Clerk session tokens always carry a kid.",
            quote(issuer)
        ),
    )
}

pub(crate) const BAD_SIGNATURE: Rejection = Rejection::new(
    Reason::BadSignature,
    "The token's signature does not verify with its issuer's key: it was altered, or signed by someone else.",
);

/// A token that a revocation covers ([`crate::revocation::index`]): which
/// revocation, and when (RFC 3339, UTC).
pub fn revoked(refusal: &Refusal) -> Rejection {
    use crate::revocation::Cause::*;
    let at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(refusal.at_ms.min(MAX_DISPLAY_MS)),
    );
    let before = "tokens issued before then are refused";
    let message = match refusal.cause {
        SessionRevoked => format!("The token's session was revoked in Clerk (session.revoked) at {at}."),
        SessionEnded => format!("The token's session was ended (Clerk session.ended) at {at}; sign in again."),
        SessionRemoved => format!("The token's session was removed in Clerk (session.removed) at {at}."),
        UserDeleted => format!("The token's user was deleted in Clerk (user.deleted) at {at}; {before}."),
        UserBanned => format!("The token's user was banned in Clerk (user.updated, banned) at {at}; {before}."),
        UserLocked => format!("The token's user was locked in Clerk (user.updated, locked) at {at}; {before}."),
        MembershipRemoved => format!(
            "The token's user was removed from the organization the token names (Clerk organizationMembership.deleted) at {at}; {before}."
        ),
        OrganizationDeleted => {
            format!("The organization the token names was deleted in Clerk (organization.deleted) at {at}; {before}.")
        }
        Operator => {
            let what = match refusal.kind {
                Kind::Session => "session",
                Kind::User => "user",
                Kind::Membership => "user's membership of the organization it names",
                Kind::Organization => "organization",
            };
            let tail = if refusal.kind == Kind::Session { String::new() } else { format!("; {before}") };
            format!("The token's {what} was revoked by an operator (clerk-introspect revoke) at {at}{tail}.")
        }
    };
    Rejection::with(Reason::SessionRevoked, message)
}

/// The last millisecond shown as a date (9999-12-31T23:59:59Z).
const MAX_DISPLAY_MS: u64 = 253_402_300_799_000;

pub(crate) fn is_supabase_auth_issuer(iss: &str) -> bool {
    let Some(rest) = iss.strip_prefix("https://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    (host.ends_with(".supabase.co") || host.ends_with(".supabase.in")) && path.trim_end_matches('/') == "auth/v1"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_supabase_auth_issuers() {
        assert!(is_supabase_auth_issuer("https://abcd.supabase.co/auth/v1"));
        assert!(is_supabase_auth_issuer("https://abcd.supabase.co/auth/v1/"));
        assert!(!is_supabase_auth_issuer("https://abcd.supabase.co"));
        assert!(!is_supabase_auth_issuer("https://clerk.example.com"));
        assert!(!is_supabase_auth_issuer("https://supabase.co.evil.com/auth/v1"));
    }

    #[test]
    fn display_names_the_reason() {
        assert_eq!(BAD_SIGNATURE.to_string().split(':').next(), Some("REASON_BAD_SIGNATURE"));
    }

    #[test]
    fn revocations_say_which_and_when() {
        use crate::revocation::Cause;
        let at_ms = 1_764_683_013_000;
        let r = revoked(&Refusal { kind: Kind::Session, cause: Cause::SessionEnded, at_ms });
        assert_eq!(r.reason, Reason::SessionRevoked);
        assert_eq!(
            r.message,
            "The token's session was ended (Clerk session.ended) at 2025-12-02T13:43:33Z; sign in again."
        );
        let r = revoked(&Refusal { kind: Kind::User, cause: Cause::UserBanned, at_ms });
        assert!(r.message.contains("banned") && r.message.contains("issued before"), "{}", r.message);
        let r = revoked(&Refusal { kind: Kind::Membership, cause: Cause::Operator, at_ms: u64::MAX });
        assert!(r.message.contains("by an operator") && r.message.contains("9999-12-31T23:59:59Z"), "{}", r.message);
    }

    #[test]
    fn quoted_values_are_bounded() {
        let long = "x".repeat(10_000);
        assert!(unknown_kid(&long, "https://a").message.len() < 400);
    }
}
