//! The verified-token cache, in two tiers keyed by the SHA-256 digest of
//! the whole token (never a part of it: two tokens share an entry only if
//! SHA-256 collides).
//!
//! A client sends the same Clerk session token many times during its 60 s
//! life. Checking its signature again each time is the one expensive step
//! of the pipeline (tens of microseconds for RS256 or ES256), and decoding
//! it again is the next one. So:
//!
//! - **tokens** (the hot tier) keeps whole results of steps 1–5
//!   ([`VerifiedToken`]: claims, payload, issuer, key, algorithm), bounded
//!   by memory: a typical Clerk session token takes about 1 KiB here (its
//!   claims are owned strings, plus the payload), so this tier holds the
//!   tokens seen most, not all of them;
//! - **signatures** keeps, for many more tokens, only the fact that their
//!   exact bytes verified with a given key (by identity, see
//!   [`KeySet::contains`](crate::keys::KeySet::contains)) and algorithm:
//!   a digest, a pointer, an algorithm and a deadline, under 100 bytes
//!   with the table's own overhead. A token found only here is decoded
//!   again but its signature is not checked again.
//!
//! Both tiers use quick_cache's S3-FIFO eviction, which resists scans: a
//! flood of one-off tokens passes through the small probation queue and
//! does not push out tokens that are seen again. An entry lives until the
//! token's `exp` plus the issuer's clock skew, never longer than
//! [`MAX_ENTRY_TTL`]. Only successful checks are stored: there is no
//! negative cache.
//!
//! The cache can save work, never change an answer. A signature check is a
//! pure function of (key, algorithm, token bytes), and the result of steps
//! 1–5 is a function of the token bytes and of three things that can
//! change, which are checked again on every hit: the issuer must still be
//! trusted, the algorithm still allowed by its policy, and the key lookup
//! (the issuer's usable keys, by `kid` and algorithm) must still choose the
//! very key object that verified the token. When a key leaves its issuer's
//! key set (a rotation, or the issuer is no longer trusted) the lookup can
//! no longer choose it, so its entries are never used again (and are
//! dropped when looked at). The policy (step 6: token kind, time, `azp`,
//! `aud`, `role`, per-call expectations) is applied on every call, cached
//! or not.

use std::sync::{Arc, Weak};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::VerifiedToken;
use super::claims::Claim;
use crate::keys::jwk::{Algorithm, VerificationKey};

/// Default number of cached tokens (`--token-cache-size`).
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 100_000;

/// Largest accepted `--token-cache-size`.
pub const MAX_TOKEN_CACHE_SIZE: usize = 10_000_000;

/// Memory of the tokens tier per unit of `--token-cache-size`, in bytes
/// (100 000 → 12.5 MiB, about 12 000 whole Clerk session tokens).
pub const TOKEN_TIER_BYTES_PER_SLOT: u64 = 128;

/// Longest an entry is used, whatever the token's `exp` says. Clerk session
/// tokens live 60 s; other kinds (JWT templates, machine tokens) may live
/// far longer, and their entries are refreshed by a real check this often.
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(300);

/// The SHA-256 digest of a whole token: the cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; SHA256_OUTPUT_LEN]);

impl TokenDigest {
    /// The digest of `token` (exactly the bytes given, after any `Bearer `
    /// prefix was removed).
    pub fn of(token: &str) -> TokenDigest {
        let mut out = [0u8; SHA256_OUTPUT_LEN];
        out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        TokenDigest(out)
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest of a token is not the token, but it still identifies one.
        f.write_str("TokenDigest(..)")
    }
}

/// A whole result of steps 1–5, as remembered.
#[derive(Clone, Debug)]
pub struct Remembered {
    /// The verified token.
    pub token: Arc<VerifiedToken>,
    /// Whether its header named a `kid` (the key lookup differs without one).
    pub had_kid: bool,
    until: i64,
    weight: u32,
}

/// One remembered signature check.
#[derive(Clone)]
struct Verified {
    /// The key that verified the token. Held weakly: the key's material is
    /// freed when it leaves every key set, and the allocation (hence the
    /// address compared) cannot be reused while this exists.
    key: Weak<VerificationKey>,
    /// The algorithm it was verified with.
    alg: Algorithm,
    /// Unix seconds after which the entry is not used.
    until: i64,
}

#[derive(Clone, Copy)]
struct ByFootprint;

impl Weighter<TokenDigest, Remembered> for ByFootprint {
    fn weight(&self, _key: &TokenDigest, value: &Remembered) -> u64 {
        u64::from(value.weight)
    }
}

/// The bounded, concurrent two-tier cache (see the module documentation).
pub struct TokenCache {
    tokens: Cache<TokenDigest, Remembered, ByFootprint>,
    signatures: Cache<TokenDigest, Verified>,
    capacity: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .field("tokens", &self.tokens.len())
            .field("signatures", &self.signatures.len())
            .finish()
    }
}

/// The entry's deadline: `until`, capped at [`MAX_ENTRY_TTL`] after `now`;
/// `None` when it is not after `now`.
fn deadline(until: i64, now: i64) -> Option<i64> {
    let until = until.min(now.saturating_add(MAX_ENTRY_TTL.as_secs() as i64));
    (until > now).then_some(until)
}

impl TokenCache {
    /// A cache for `capacity` tokens (their signature checks; the most used
    /// of them whole, within `capacity` × [`TOKEN_TIER_BYTES_PER_SLOT`]
    /// bytes); `None` when `capacity` is 0 (caching disabled).
    pub fn new(capacity: usize) -> Option<TokenCache> {
        Self::with_token_bytes(capacity, capacity as u64 * TOKEN_TIER_BYTES_PER_SLOT)
    }

    /// A cache for `capacity` signature checks, and whole tokens within
    /// `token_bytes` (0: signature checks only); `None` when `capacity` is 0.
    pub fn with_token_bytes(capacity: usize, token_bytes: u64) -> Option<TokenCache> {
        if capacity == 0 {
            return None;
        }
        let estimated_tokens = usize::try_from(token_bytes / 1024).unwrap_or(usize::MAX).max(1);
        Some(TokenCache {
            tokens: Cache::with_weighter(estimated_tokens, token_bytes, ByFootprint),
            signatures: Cache::new(capacity),
            capacity,
        })
    }

    /// The whole result remembered for the token with `digest`, if still
    /// within its lifetime at `now` (Unix seconds). The caller must check
    /// that the trust still chooses its key before using it.
    pub fn token(&self, digest: &TokenDigest, now: i64) -> Option<Remembered> {
        let hit = self.tokens.get(digest)?;
        if now < hit.until {
            return Some(hit);
        }
        self.tokens.remove(digest);
        None
    }

    /// Forgets the whole result for `digest` (its key is no longer chosen).
    pub fn forget_token(&self, digest: &TokenDigest) {
        self.tokens.remove(digest);
    }

    /// Remembers a whole result until the token's `exp` plus `skew` (capped
    /// at [`MAX_ENTRY_TTL`] after `now`).
    pub fn insert_token(&self, digest: TokenDigest, token: &Arc<VerifiedToken>, had_kid: bool, skew: i64, now: i64) {
        let Claim::Present(exp) = token.claims.exp else { return };
        let Some(until) = deadline(exp.saturating_add(skew), now) else { return };
        let weight = u32::try_from(footprint(token)).unwrap_or(u32::MAX);
        self.tokens.insert(digest, Remembered { token: token.clone(), had_kid, until, weight });
    }

    /// Whether the token with `digest` was verified with exactly `key`
    /// (the same parsed key object) and `alg`, and the entry is still
    /// within its lifetime at `now` (Unix seconds). An entry that no
    /// longer fits is dropped.
    pub fn verified(&self, digest: &TokenDigest, key: &Arc<VerificationKey>, alg: Algorithm, now: i64) -> bool {
        let Some(entry) = self.signatures.get(digest) else {
            return false;
        };
        if std::ptr::eq(entry.key.as_ptr(), Arc::as_ptr(key)) && entry.alg == alg && now < entry.until {
            return true;
        }
        // Expired, or verified with a key (or algorithm) this lookup did not
        // choose: useless from now on.
        self.signatures.remove(digest);
        false
    }

    /// Remembers that the token with `digest` verified with `key` and `alg`,
    /// until `until` (Unix seconds; capped at [`MAX_ENTRY_TTL`] after `now`).
    /// Nothing is stored when `until` is not after `now`.
    pub fn insert(&self, digest: TokenDigest, key: &Arc<VerificationKey>, alg: Algorithm, until: i64, now: i64) {
        if let Some(until) = deadline(until, now) {
            self.signatures.insert(digest, Verified { key: Arc::downgrade(key), alg, until });
        }
    }

    /// The most tokens whose signature checks are kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Signature checks currently kept (including expired ones not yet
    /// looked at or evicted).
    pub fn signatures_len(&self) -> usize {
        self.signatures.len()
    }

    /// Whole results currently kept.
    pub fn tokens_len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty() && self.tokens.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.signatures.clear();
        self.tokens.clear();
    }
}

/// Approximate heap bytes of a remembered token (the struct, its strings,
/// the allocator's overhead per allocation, and the cache slot).
fn footprint(t: &VerifiedToken) -> usize {
    const ALLOCATION: usize = 16;
    const SLOT: usize = 96;
    let text = |s: &str| if s.is_empty() { 0 } else { s.len() + ALLOCATION };
    let claim = |c: &Claim<String>| c.get().map_or(0, |s| text(s));
    let opt = |c: &Option<String>| c.as_deref().map_or(0, text);
    let c = &t.claims;
    let aud = c.aud.get().map_or(0, |a| a.len() * 24 + ALLOCATION + a.iter().map(|s| text(s)).sum::<usize>());
    std::mem::size_of::<VerifiedToken>()
        + 2 * std::mem::size_of::<usize>()
        + ALLOCATION
        + SLOT
        + text(&t.payload)
        + [&c.iss, &c.sub, &c.azp, &c.role, &c.sts].into_iter().map(claim).sum::<usize>()
        + [&c.sid, &c.org.id, &c.org.role, &c.org.slug].into_iter().map(opt).sum::<usize>()
        + aud
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::jwk::key_from_jwk_json;
    use crate::test_issuer::TestKey;

    fn key(alg: Algorithm) -> Arc<VerificationKey> {
        Arc::new(key_from_jwk_json(TestKey::generate("k", alg).jwk()).unwrap())
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        assert!(TokenCache::new(0).is_none());
        assert_eq!(TokenCache::new(5).unwrap().capacity(), 5);
    }

    #[test]
    fn digest_covers_every_byte() {
        assert_eq!(TokenDigest::of("a.b.c"), TokenDigest::of("a.b.c"));
        assert_ne!(TokenDigest::of("a.b.c"), TokenDigest::of("a.b.d"));
        assert_ne!(TokenDigest::of("a.b.c"), TokenDigest::of("a.b.c "));
        assert_eq!(format!("{:?}", TokenDigest::of("secret")), "TokenDigest(..)");
    }

    #[test]
    fn an_entry_answers_only_for_its_own_key_algorithm_and_lifetime() {
        let cache = TokenCache::new(100).unwrap();
        let (k1, k2) = (key(Algorithm::ES256), key(Algorithm::ES256));
        let d = TokenDigest::of("t1");
        assert!(!cache.verified(&d, &k1, Algorithm::ES256, 0));
        cache.insert(d, &k1, Algorithm::ES256, 100, 0);
        assert!(cache.verified(&d, &k1, Algorithm::ES256, 99));
        assert!(!cache.verified(&TokenDigest::of("t2"), &k1, Algorithm::ES256, 0));
        // An equal but distinct key object is another key: the entry is dropped.
        assert!(!cache.verified(&d, &k2, Algorithm::ES256, 0));
        assert!(!cache.verified(&d, &k1, Algorithm::ES256, 0));

        cache.insert(d, &k1, Algorithm::ES256, 100, 0);
        assert!(!cache.verified(&d, &k1, Algorithm::ES384, 0), "another algorithm");
        cache.insert(d, &k1, Algorithm::ES256, 100, 0);
        assert!(!cache.verified(&d, &k1, Algorithm::ES256, 100), "expired at `until`");
        assert!(cache.is_empty());
    }

    #[test]
    fn lifetime_is_capped_and_past_deadlines_are_not_stored() {
        let cache = TokenCache::new(100).unwrap();
        let k = key(Algorithm::EdDSA);
        let d = TokenDigest::of("t");
        cache.insert(d, &k, Algorithm::EdDSA, 10, 10);
        assert!(cache.is_empty());
        let ttl = MAX_ENTRY_TTL.as_secs() as i64;
        cache.insert(d, &k, Algorithm::EdDSA, i64::MAX, 1000);
        assert!(cache.verified(&d, &k, Algorithm::EdDSA, 1000 + ttl - 1));
        assert!(!cache.verified(&d, &k, Algorithm::EdDSA, 1000 + ttl));
    }

    #[test]
    fn a_dropped_key_is_never_matched() {
        let cache = TokenCache::new(100).unwrap();
        let d = TokenDigest::of("t");
        let k = key(Algorithm::EdDSA);
        cache.insert(d, &k, Algorithm::EdDSA, 100, 0);
        drop(k);
        let entry = cache.signatures.peek(&d).unwrap();
        assert!(entry.key.upgrade().is_none(), "the key material is freed");
        // The weak reference pins the old allocation: no new key can take
        // its address and be mistaken for it.
        let fresh: Vec<_> = (0..50).map(|_| key(Algorithm::EdDSA)).collect();
        for f in &fresh {
            assert!(!std::ptr::eq(entry.key.as_ptr(), Arc::as_ptr(f)));
        }
        assert!(!cache.verified(&d, &fresh[0], Algorithm::EdDSA, 0));
    }

    fn verified_token(key: &Arc<VerificationKey>, exp: i64, payload_len: usize) -> Arc<VerifiedToken> {
        let claims = super::super::Claims {
            exp: Claim::Present(exp),
            sub: Claim::Present("user_1".into()),
            ..Default::default()
        };
        Arc::new(VerifiedToken {
            issuer: Arc::from("https://clerk.example.com"),
            key: key.clone(),
            algorithm: Algorithm::ES256,
            kind: crate::verify::TokenKind::Session,
            claims,
            payload: "x".repeat(payload_len).into(),
        })
    }

    #[test]
    fn whole_tokens_live_until_exp_plus_skew() {
        let cache = TokenCache::new(1000).unwrap();
        let k = key(Algorithm::ES256);
        let d = TokenDigest::of("t");
        cache.insert_token(d, &verified_token(&k, 100, 300), true, 5, 0);
        let hit = cache.token(&d, 104).unwrap();
        assert!(hit.had_kid && Arc::ptr_eq(&hit.token.key, &k));
        assert!(cache.token(&d, 105).is_none(), "expired at exp + skew");
        assert_eq!(cache.tokens_len(), 0, "and dropped");
        // Already past its deadline, or without exp: not stored.
        cache.insert_token(d, &verified_token(&k, 100, 300), true, 5, 105);
        let no_exp = Arc::into_inner(verified_token(&k, 100, 300)).unwrap();
        let no_exp = VerifiedToken { claims: Default::default(), ..no_exp };
        cache.insert_token(d, &Arc::new(no_exp), true, 5, 0);
        assert_eq!(cache.tokens_len(), 0);
        // Forgotten on request.
        cache.insert_token(d, &verified_token(&k, 100, 300), false, 5, 0);
        assert!(cache.token(&d, 0).is_some_and(|h| !h.had_kid));
        cache.forget_token(&d);
        assert!(cache.token(&d, 0).is_none());
    }

    #[test]
    fn the_tokens_tier_is_bounded_by_memory() {
        // 1000 slots: 125 KiB for whole tokens, about 1 KiB each here.
        let cache = TokenCache::new(1000).unwrap();
        let k = key(Algorithm::ES256);
        let t = verified_token(&k, 100, 600);
        let size = footprint(&t);
        assert!((900..1400).contains(&size), "{size}");
        for i in 0..1000 {
            cache.insert_token(TokenDigest::of(&i.to_string()), &t, true, 0, 0);
        }
        let budget = 1000 * TOKEN_TIER_BYTES_PER_SLOT as usize;
        assert!(cache.tokens_len() * size <= budget, "{} tokens of {size} bytes", cache.tokens_len());
        assert!(cache.tokens_len() > budget / size / 2, "{}", cache.tokens_len());
    }

    #[test]
    fn capacity_is_a_bound() {
        let cache = TokenCache::new(1000).unwrap();
        let k = key(Algorithm::EdDSA);
        for i in 0..10_000 {
            cache.insert(TokenDigest::of(&i.to_string()), &k, Algorithm::EdDSA, 100, 0);
        }
        assert!(cache.signatures_len() <= 1000, "{}", cache.signatures_len());
    }
}
