//! The verification pipeline, in the contract's order:
//!
//! 1. input: size, three base64url parts, strict JSON objects ([`json`]),
//!    no `crit`, no JWE or RFC 7797 members ([`token`]);
//! 2. `alg`: never `none` or HMAC, and in the issuer's allow-list;
//! 3. `iss`: exactly one of the configured issuers (a token without `iss`
//!    is still signature-checked when only one issuer is configured, then
//!    refused);
//! 4. key: by (issuer, kid), refetching once on an unknown kid, and
//!    fetching (rate-limited) when the issuer has no usable keys; the
//!    algorithm must fit the key's type, curve and JWK `alg`;
//! 5. signature, before any claim is trusted;
//! 6. policy ([`policy::check`]): token kind, required claims, time,
//!    session status, `azp`, `aud`, `role`, narrowed by the call's
//!    [`Expectations`].
//!
//! 7. revocation ([`crate::revocation::index`]): the token's session, user
//!    (by `iat`), membership or organization (by `iat`) was revoked.
//!
//! Steps 1–5 produce a [`VerifiedToken`]; steps 6 and 7 run on every call.
//! With a [`cache::TokenCache`], step 5 is skipped for a token whose exact
//! bytes already verified with the very key step 4 chose.

pub mod cache;
pub mod claims;
pub mod json;
pub mod policy;
pub mod rejection;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::keys::jwk::{Algorithm, VerificationKey};
use crate::keys::{IssuerKeys, KeyMatch, KeySet};
use crate::revocation::index::{Index, TokenFacts};
use cache::{TokenCache, TokenDigest};
pub use claims::Claims;
pub use policy::{Policy, TokenKinds};
pub use rejection::{Reason, Rejection};
pub use token::TokenKind;

/// Extra conditions for one call. They can only narrow what the issuer's
/// policy accepts, never widen it. Empty lists add nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expectations<'a> {
    /// `azp` must be present and one of these.
    pub authorized_parties: &'a [String],
    /// `aud` must contain one of these.
    pub audiences: &'a [String],
    /// `role` must be one of these (and allowed by the policy).
    pub roles: &'a [String],
}

/// A trusted issuer: its policy and its key cache.
#[derive(Clone, Debug)]
pub struct TrustedIssuer {
    /// The policy applied to its tokens.
    pub policy: Arc<Policy>,
    /// Its keys.
    pub keys: Arc<IssuerKeys>,
}

/// The set of trusted issuers at one moment; swapped as a whole on reload.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    issuers: HashMap<Arc<str>, TrustedIssuer>,
}

impl Trust {
    /// Builds the set from issuers (keyed by their exact issuer string).
    pub fn new(issuers: impl IntoIterator<Item = TrustedIssuer>) -> Self {
        Self { issuers: issuers.into_iter().map(|i| (i.keys.issuer().clone(), i)).collect() }
    }

    /// The issuer whose identifier equals `iss` exactly.
    pub fn get(&self, iss: &str) -> Option<&TrustedIssuer> {
        self.issuers.get(iss)
    }

    /// The only trusted issuer, when there is exactly one.
    pub fn sole(&self) -> Option<&TrustedIssuer> {
        let mut all = self.issuers.values();
        match (all.next(), all.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// Every trusted issuer.
    pub fn issuers(&self) -> impl Iterator<Item = &TrustedIssuer> {
        self.issuers.values()
    }
}

/// A token whose signature verified: what steps 1–5 established. The
/// policy ([`policy::check`]) has still to be applied.
#[derive(Debug)]
pub struct VerifiedToken {
    /// The issuer, as configured.
    pub issuer: Arc<str>,
    /// The key that verified it.
    pub key: Arc<VerificationKey>,
    /// The algorithm it was verified with.
    pub algorithm: Algorithm,
    /// Its kind (header `typ`/`cat`, and the `mch_` subject rule).
    pub kind: TokenKind,
    /// The claims we read.
    pub claims: Claims,
    /// The payload exactly as signed (JSON text).
    pub payload: Box<str>,
}

/// Why no answer about the token could be given.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token was refused.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The token's issuer is trusted, but none of its keys are usable
    /// (never loaded, or stale beyond the allowed age).
    #[error("the keys of issuer {issuer} are not available")]
    Unavailable {
        /// The issuer.
        issuer: Arc<str>,
    },
}

/// Verifies tokens against the current [`Trust`].
pub struct Verifier {
    trust: ArcSwap<Trust>,
    clock: Arc<dyn Clock>,
    cache: Option<TokenCache>,
    /// Revoked sessions, users, memberships and organizations, asked on
    /// every call (cache hits included) once the policy passed.
    revocations: Option<Arc<Index>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier over `trust`, reading time from `clock`, without a
    /// token cache (every call checks the signature).
    pub fn new(trust: Trust, clock: Arc<dyn Clock>) -> Self {
        Self::with_token_cache(trust, clock, 0)
    }

    /// A verifier that remembers up to `cache_size` verified tokens (see
    /// [`cache`]); 0 disables the cache.
    pub fn with_token_cache(trust: Trust, clock: Arc<dyn Clock>, cache_size: usize) -> Self {
        Self::with_cache(trust, clock, TokenCache::new(cache_size))
    }

    /// A verifier with the given token cache (`None`: no cache).
    pub fn with_cache(trust: Trust, clock: Arc<dyn Clock>, cache: Option<TokenCache>) -> Self {
        Self { trust: ArcSwap::from_pointee(trust), clock, cache, revocations: None }
    }

    /// The same verifier, refusing what `index` says is revoked (on every
    /// call, whether steps 1–5 came from the cache or not).
    pub fn with_revocations(mut self, index: Arc<Index>) -> Self {
        self.revocations = Some(index);
        self
    }

    /// The revocation index, if one is consulted.
    pub fn revocations(&self) -> Option<&Arc<Index>> {
        self.revocations.as_ref()
    }

    /// The token cache, if enabled.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }

    /// The current trust set.
    pub fn trust(&self) -> Arc<Trust> {
        self.trust.load_full()
    }

    /// Replaces the trust set (configuration reload).
    pub fn set_trust(&self, trust: Trust) {
        self.trust.store(Arc::new(trust));
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Verifies `raw` (an optional `Bearer ` prefix is accepted) and applies
    /// the issuer's policy narrowed by `expect`.
    ///
    /// With a token cache, whether steps 1–5 were answered from it (whole,
    /// or just the signature check) is recorded as `cached` on the current
    /// span.
    pub async fn verify(&self, raw: &str, expect: &Expectations<'_>) -> Result<Arc<VerifiedToken>, VerifyError> {
        let trust = self.trust.load_full();
        let token = token::strip_bearer(raw);
        let Some(cache) = &self.cache else {
            let verified = Arc::new(Box::pin(self.verify_steps(&trust, token, None)).await?.0);
            self.check_policy(&trust, &verified, expect)?;
            self.check_revoked(&verified)?;
            return Ok(verified);
        };
        let digest = TokenDigest::of(token);
        let now = self.clock.unix_seconds();
        if let Some(hit) = cache.token(&digest, now) {
            if let Some(issuer) = chosen_issuer(&trust, &hit) {
                tracing::Span::current().record("cached", true);
                apply_policy(issuer, &hit.token, expect, now)?;
                // Never a revoked token from the cache: asked on every hit.
                self.check_revoked(&hit.token)?;
                return Ok(hit.token);
            }
            cache.forget_token(&digest);
        }
        // Boxed: the slow path's state (decode, refetch) is large, and a
        // cache hit should not move it around (measured, docs/performance.md).
        let (verified, had_kid) = Box::pin(self.verify_steps(&trust, token, Some(&digest))).await?;
        let verified = Arc::new(verified);
        let issuer = trust.get(&verified.issuer).ok_or_else(|| rejection::untrusted_issuer(&verified.issuer))?;
        cache.insert_token(digest, &verified, had_kid, skew_of(&issuer.policy), now);
        // A fresh reading: an unknown-kid refetch may have taken a while.
        apply_policy(issuer, &verified, expect, self.clock.unix_seconds())?;
        self.check_revoked(&verified)?;
        Ok(verified)
    }

    /// Refuses a token that a revocation covers ([`Index::check`]).
    #[inline]
    pub fn check_revoked(&self, token: &VerifiedToken) -> Result<(), Rejection> {
        let Some(index) = &self.revocations else { return Ok(()) };
        if index.is_empty() {
            return Ok(());
        }
        let c = &token.claims;
        let facts = TokenFacts {
            sid: c.sid.as_deref(),
            sub: c.sub.get().map(String::as_str),
            iat: c.iat.get().copied(),
            org_id: c.org.id.as_deref(),
        };
        match index.check(&facts) {
            None => Ok(()),
            Some(refusal) => Err(rejection::revoked(&refusal)),
        }
    }

    /// Steps 1–5: decode, algorithm, issuer, key, signature.
    pub async fn verify_signature(&self, trust: &Trust, raw: &str) -> Result<VerifiedToken, VerifyError> {
        let token = token::strip_bearer(raw);
        let digest = self.cache.as_ref().map(|_| TokenDigest::of(token));
        Ok(self.verify_steps(trust, token, digest.as_ref()).await?.0)
    }

    /// Steps 1–5 for a token without its `Bearer ` prefix, with the token's
    /// digest when the cache is on; also says whether the header had a `kid`.
    async fn verify_steps(
        &self,
        trust: &Trust,
        token: &str,
        digest: Option<&TokenDigest>,
    ) -> Result<(VerifiedToken, bool), VerifyError> {
        let decoded = token::decode(token)?;
        let alg = decoded.header.alg;
        // Without a usable iss, a single trusted issuer's keys still check the
        // signature first (so an altered token reads as altered); the missing
        // iss is refused after that, and never costs a refetch or an outage.
        let has_iss = decoded.claims.iss.get().is_some();
        let issuer = match decoded.claims.iss.get() {
            Some(iss) => trust.get(iss).ok_or_else(|| rejection::untrusted_issuer(iss))?,
            None => trust.sole().ok_or(rejection::NO_ISSUER)?,
        };
        if !issuer.policy.algorithms.contains(alg) {
            return Err(rejection::alg_not_in_allow_list(alg.as_str(), issuer.policy.algorithms).into());
        }
        let keys = &issuer.keys;
        let unavailable = || {
            if has_iss {
                keys.note_unavailable();
                VerifyError::Unavailable { issuer: keys.issuer().clone() }
            } else {
                rejection::NO_ISSUER.into()
            }
        };
        let set = match keys.usable() {
            Some(set) => set,
            // No usable keys: a shared, rate-limited fetch, so that answers
            // return as soon as the issuer does.
            None if has_iss => keys.refetch_when_unusable().await.ok_or_else(unavailable)?,
            None => return Err(unavailable()),
        };
        let kid = decoded.header.kid.as_deref();
        let key = match lookup(&set, kid, alg, keys)? {
            Some(key) => key,
            None if !has_iss => return Err(rejection::NO_ISSUER.into()),
            None => {
                // Unknown kid: one shared, rate-limited refetch.
                let kid = kid.unwrap_or_default();
                let fresh = keys.refetch_for_unknown_kid(kid).await;
                let set = fresh.or_else(|| keys.usable()).ok_or_else(unavailable)?;
                lookup(&set, Some(kid), alg, keys)?.ok_or_else(|| rejection::unknown_kid(kid, keys.issuer()))?
            }
        };
        // Step 5, unless this very token already verified with this very key.
        let cache = self.cache.as_ref().zip(digest);
        let now = self.clock.unix_seconds();
        let cached = cache.is_some_and(|(cache, digest)| cache.verified(digest, &key, alg, now));
        tracing::Span::current().record("cached", cached);
        if !cached && !key.verify(alg, decoded.signing_input, decoded.signature()) {
            return Err(rejection::BAD_SIGNATURE.into());
        }
        if !has_iss {
            return Err(rejection::NO_ISSUER.into());
        }
        if !cached && let (Some((cache, digest)), claims::Claim::Present(exp)) = (cache, &decoded.claims.exp) {
            cache.insert(*digest, &key, alg, exp.saturating_add(skew_of(&issuer.policy)), now);
        }
        let kind = policy::effective_kind(decoded.header.kind, &decoded.claims);
        let payload = decoded.payload;
        let verified = VerifiedToken {
            issuer: keys.issuer().clone(),
            key,
            algorithm: alg,
            kind,
            claims: decoded.claims,
            payload: payload.into_boxed_str(),
        };
        Ok((verified, kid.is_some()))
    }

    /// Step 6: the issuer's policy (as configured now) and the call's
    /// expectations, at the current time.
    pub fn check_policy(
        &self,
        trust: &Trust,
        token: &VerifiedToken,
        expect: &Expectations<'_>,
    ) -> Result<(), Rejection> {
        let issuer = trust.get(&token.issuer).ok_or_else(|| rejection::untrusted_issuer(&token.issuer))?;
        apply_policy(issuer, token, expect, self.clock.unix_seconds())
    }
}

/// Step 6 against `issuer`'s policy at `now` (Unix seconds).
fn apply_policy(
    issuer: &TrustedIssuer,
    token: &VerifiedToken,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<(), Rejection> {
    policy::check(token.kind, &token.claims, &issuer.policy, expect, now)
}

/// The policy's clock skew in seconds.
fn skew_of(policy: &Policy) -> i64 {
    i64::try_from(policy.clock_skew.as_secs()).unwrap_or(i64::MAX)
}

/// The remembered token's issuer, if steps 2–4 would, under `trust` as it
/// is now, lead to the key that verified it: its issuer still trusted, its
/// algorithm still allowed, the issuer's keys usable, and the key lookup
/// choosing the very same key object. Then steps 1–5 would give the same
/// result again (the token's bytes, hence its decoding and signature check,
/// are the same).
fn chosen_issuer<'t>(trust: &'t Trust, hit: &cache::Remembered) -> Option<&'t TrustedIssuer> {
    let t = &hit.token;
    let issuer = trust.get(&t.issuer)?;
    if !issuer.policy.algorithms.contains(t.algorithm) {
        return None;
    }
    let kid = if hit.had_kid { t.key.kid() } else { None };
    let set = issuer.keys.usable()?;
    matches!(set.find(kid, t.algorithm), KeyMatch::Found(k) if Arc::ptr_eq(k, &t.key)).then_some(issuer)
}

/// Looks the token's key up: `Ok(None)` means "unknown kid, worth a refetch".
fn lookup(
    set: &KeySet,
    kid: Option<&str>,
    alg: Algorithm,
    keys: &IssuerKeys,
) -> Result<Option<Arc<VerificationKey>>, Rejection> {
    match set.find(kid, alg) {
        KeyMatch::Found(key) => Ok(Some(key.clone())),
        KeyMatch::WrongType(key) => Err(rejection::alg_key_mismatch(
            alg.as_str(),
            kid,
            key.family().as_str(),
            key.jwk_alg().map(Algorithm::as_str),
        )),
        KeyMatch::UnknownKid => Ok(None),
        KeyMatch::Ambiguous => Err(rejection::no_kid_ambiguous(keys.issuer(), alg.as_str())),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod future_size {
    /// A cache hit moves the `verify` future around (boxed by the gRPC
    /// layer, polled through it): the slow path's large state is boxed
    /// separately so that this stays small (it was 2 KiB before).
    #[test]
    fn the_verify_future_is_small() {
        let v = super::Verifier::new(super::Trust::new(Vec::new()), std::sync::Arc::new(crate::clock::SystemClock));
        let expect = super::Expectations::default();
        let future = v.verify("a.b.c", &expect);
        assert!(std::mem::size_of_val(&future) <= 256, "{} bytes", std::mem::size_of_val(&future));
    }
}
