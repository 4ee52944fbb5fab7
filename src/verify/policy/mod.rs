//! An issuer's [`Policy`] and the checks it applies to a token's claims
//! (after the signature verified) on every verification: token kind,
//! required claims, time, azp, aud, role.

use std::time::Duration;

use super::Expectations;
use super::claims::{Claim, Claims};
use super::rejection::{Reason, Rejection, quote};
use super::token::TokenKind;
use crate::keys::jwk::AlgorithmSet;

/// Which token kinds an issuer accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenKinds(u8);

impl TokenKinds {
    /// Session tokens only (the default).
    pub const SESSION_ONLY: TokenKinds = TokenKinds(1);

    const fn bit(kind: TokenKind) -> u8 {
        match kind {
            TokenKind::Session => 1,
            TokenKind::JwtTemplate => 2,
            TokenKind::Machine => 4,
            TokenKind::OAuth => 8,
            TokenKind::Unrecognized => 0,
        }
    }

    /// No kind at all.
    pub const fn empty() -> TokenKinds {
        TokenKinds(0)
    }

    /// The set with `kind` added (adding `Unrecognized` changes nothing).
    pub const fn with(self, kind: TokenKind) -> TokenKinds {
        TokenKinds(self.0 | Self::bit(kind))
    }

    /// Whether `kind` is accepted (`Unrecognized` never is).
    pub const fn contains(self, kind: TokenKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

impl Default for TokenKinds {
    fn default() -> Self {
        TokenKinds::SESSION_ONLY
    }
}

impl FromIterator<TokenKind> for TokenKinds {
    fn from_iter<I: IntoIterator<Item = TokenKind>>(iter: I) -> Self {
        iter.into_iter().fold(TokenKinds::empty(), TokenKinds::with)
    }
}

/// What one issuer accepts. Per-call [`Expectations`] can only narrow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allowed algorithms (default: every asymmetric algorithm implemented).
    pub algorithms: AlgorithmSet,
    /// When non-empty, `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// When non-empty, a present `azp` must be one of these.
    pub authorized_parties: Vec<String>,
    /// Whether `azp` must be present (Clerk omits it on tokens minted
    /// without an Origin, e.g. top-level navigations and server-side minting).
    pub require_azp: bool,
    /// Allowed values of `role` (default: `authenticated`).
    pub roles: Vec<String>,
    /// Accepted token kinds (default: session tokens only).
    pub token_kinds: TokenKinds,
    /// Whether a pending session (`sts: "pending"`) is accepted.
    pub accept_pending_sessions: bool,
    /// Leeway for `exp`, `nbf` and `iat` (default 5 s, as Clerk's SDKs).
    pub clock_skew: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            algorithms: AlgorithmSet::all(),
            audiences: Vec::new(),
            authorized_parties: Vec::new(),
            require_azp: false,
            roles: vec!["authenticated".to_owned()],
            token_kinds: TokenKinds::SESSION_ONLY,
            accept_pending_sessions: false,
            clock_skew: Duration::from_secs(5),
        }
    }
}

/// The token's kind, with Clerk's machine-subject rule applied.
pub fn effective_kind(header_kind: TokenKind, claims: &Claims) -> TokenKind {
    if header_kind == TokenKind::Session && claims.sub.get().is_some_and(|s| s.starts_with("mch_")) {
        TokenKind::Machine
    } else {
        header_kind
    }
}

/// Applies the policy (and the call's expectations) to verified claims, in
/// the contract's order: kind, required claims, time, session status,
/// azp, aud, role. Runs on every verification, cached or not.
pub fn check(
    kind: TokenKind,
    claims: &Claims,
    policy: &Policy,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<(), Rejection> {
    check_kind(kind, policy)?;
    let exp = match claims.exp {
        Claim::Present(e) => e,
        Claim::Absent => return Err(missing("exp", "an expiry time")),
        Claim::WrongType => return Err(wrong_type("exp", "a number (seconds since 1970)")),
    };
    match &claims.sub {
        Claim::Present(s) if !s.is_empty() => {}
        Claim::Present(_) => {
            return Err(Rejection::new(
                Reason::MissingClaim,
                "The token's \"sub\" claim is empty; it must name the Clerk user.",
            ));
        }
        Claim::Absent => return Err(missing("sub", "the Clerk user id")),
        Claim::WrongType => return Err(wrong_type("sub", "a string (the Clerk user id)")),
    }
    let nbf = time_claim(&claims.nbf, "nbf")?;
    let iat = time_claim(&claims.iat, "iat")?;
    let skew = i64::try_from(policy.clock_skew.as_secs()).unwrap_or(i64::MAX);

    if now >= exp.saturating_add(skew) {
        return Err(Rejection::with(
            Reason::Expired,
            format!(
                "The token expired {} s ago (allowed clock skew {skew} s); Clerk session tokens live 60 s, so the client must get a fresh one (Clerk's getToken()) for each request.",
                now.saturating_sub(exp)
            ),
        ));
    }
    for (name, value) in [("nbf", nbf), ("iat", iat)] {
        if let Some(t) = value
            && t > now.saturating_add(skew)
        {
            return Err(Rejection::with(
                Reason::NotYetValid,
                format!(
                    "The token's \"{name}\" is {} s in the future (allowed clock skew {skew} s); check the clock of this host or of the issuer.",
                    t.saturating_sub(now)
                ),
            ));
        }
    }
    match &claims.sts {
        Claim::Present(s) if s == "pending" && !policy.accept_pending_sessions => {
            return Err(Rejection::new(
                Reason::SessionPending,
                "The session is pending (sts \"pending\", e.g. an organization must be chosen first); Clerk treats pending sessions as signed out.",
            ));
        }
        Claim::WrongType => return Err(wrong_type("sts", "a string")),
        _ => {}
    }
    check_azp(&claims.azp, policy, expect)?;
    check_aud(&claims.aud, policy, expect)?;
    check_role(&claims.role, policy, expect)
}

fn check_kind(kind: TokenKind, policy: &Policy) -> Result<(), Rejection> {
    if policy.token_kinds.contains(kind) {
        return Ok(());
    }
    let msg = match kind {
        TokenKind::JwtTemplate => {
            "The token is a Clerk JWT-template token, not a session token; JWT templates (including the deprecated Supabase template) are not accepted here unless the operator accepts the jwt-template kind."
        }
        TokenKind::Machine => {
            "The token is a Clerk machine (M2M) token, not a user session token; it is accepted only where the operator accepts the machine kind."
        }
        TokenKind::OAuth => {
            "The token is an OAuth access token (typ at+jwt), not a Clerk session token; it is accepted only where the operator accepts the oauth kind."
        }
        TokenKind::Unrecognized => {
            "The token's typ or Clerk category (cat) header is not one this service recognises, so it is not treated as a session token."
        }
        TokenKind::Session => "Session tokens are not accepted for this issuer.",
    };
    Err(Rejection::new(Reason::TokenTypeNotAccepted, msg))
}

fn time_claim(c: &Claim<i64>, name: &'static str) -> Result<Option<i64>, Rejection> {
    match c {
        Claim::Present(v) => Ok(Some(*v)),
        Claim::Absent => Ok(None),
        Claim::WrongType => Err(wrong_type(name, "a number (seconds since 1970)")),
    }
}

fn missing(name: &str, what: &str) -> Rejection {
    Rejection::with(Reason::MissingClaim, format!("The token has no \"{name}\" claim ({what}), which is required."))
}

fn wrong_type(name: &str, what: &str) -> Rejection {
    Rejection::with(Reason::MissingClaim, format!("The token's \"{name}\" claim must be {what}."))
}

fn check_azp(azp: &Claim<String>, policy: &Policy, expect: &Expectations<'_>) -> Result<(), Rejection> {
    let azp = match azp {
        Claim::Present(a) => Some(a.as_str()),
        Claim::Absent => None,
        Claim::WrongType => return Err(wrong_type("azp", "a string (the origin that asked for the token)")),
    };
    match azp {
        None if policy.require_azp || !expect.authorized_parties.is_empty() => Err(Rejection::new(
            Reason::AuthorizedPartyMismatch,
            "The token has no \"azp\" claim, but an authorized party is required; Clerk omits azp on tokens minted without an Origin header (e.g. server-side or on a top-level navigation).",
        )),
        None => Ok(()),
        Some(a) => {
            let server_ok = policy.authorized_parties.is_empty() || policy.authorized_parties.iter().any(|p| p == a);
            let call_ok = expect.authorized_parties.is_empty() || expect.authorized_parties.iter().any(|p| p == a);
            if server_ok && call_ok {
                Ok(())
            } else {
                Err(Rejection::with(
                    Reason::AuthorizedPartyMismatch,
                    format!(
                        "The token's authorized party (azp) {} is not one of the allowed origins; add the app's origin to the authorized parties if it is yours.",
                        quote(a)
                    ),
                ))
            }
        }
    }
}

fn check_aud(aud: &Claim<Vec<String>>, policy: &Policy, expect: &Expectations<'_>) -> Result<(), Rejection> {
    let aud: &[String] = match aud {
        Claim::Present(a) => a,
        Claim::Absent => &[],
        Claim::WrongType => return Err(wrong_type("aud", "a string or an array of strings")),
    };
    let contains_one = |wanted: &[String]| wanted.is_empty() || aud.iter().any(|a| wanted.contains(a));
    if contains_one(&policy.audiences) && contains_one(expect.audiences) {
        return Ok(());
    }
    let msg = if aud.is_empty() {
        "The token has no \"aud\" claim, but an audience is required; Clerk session tokens carry aud only when it is added to the session token's claims.".to_owned()
    } else {
        format!(
            "None of the token's audiences ({}) is an expected audience.",
            aud.iter().take(5).map(|a| quote(a)).collect::<Vec<_>>().join(", ")
        )
    };
    Err(Rejection::with(Reason::AudienceMismatch, msg))
}

fn check_role(role: &Claim<String>, policy: &Policy, expect: &Expectations<'_>) -> Result<(), Rejection> {
    let role = match role {
        Claim::Present(r) => r,
        Claim::Absent => {
            return Err(Rejection::new(
                Reason::MissingRole,
                "The token has no \"role\" claim: enable Clerk's Supabase integration (or add \"role\": \"authenticated\" to the session token), otherwise PostgREST silently runs the request as anon.",
            ));
        }
        Claim::WrongType => {
            return Err(Rejection::new(
                Reason::RoleNotAllowed,
                "The token's \"role\" claim is not a string, so it cannot name a Postgres role.",
            ));
        }
    };
    let server_ok = policy.roles.iter().any(|r| r == role);
    let call_ok = expect.roles.is_empty() || expect.roles.iter().any(|r| r == role);
    if server_ok && call_ok {
        return Ok(());
    }
    let hint = if role == "service_role" {
        " service_role bypasses Row Level Security in Supabase and is never accepted unless the operator names it."
    } else {
        ""
    };
    Err(Rejection::with(
        Reason::RoleNotAllowed,
        format!("The token's role {} is not an allowed Postgres role here.{hint}", quote(role)),
    ))
}

#[cfg(test)]
mod tests;
