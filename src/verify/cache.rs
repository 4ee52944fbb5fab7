//! The verified-token cache: a bounded memo of successful signature checks.
//!
//! A client sends the same Clerk session token many times during its 60 s
//! life. Verifying its signature again each time is the one expensive step
//! of the pipeline (tens of microseconds for RS256 or ES256, against about
//! two for everything else), so this cache remembers, for a token that
//! verified, *which key* verified it and with *which algorithm*:
//!
//! - the cache key is the SHA-256 digest of the whole token (never a part
//!   of it, so two tokens share an entry only if SHA-256 collides);
//! - the entry holds the key (by identity, see
//!   [`KeySet::contains`](crate::keys::KeySet::contains)) and the algorithm;
//! - an entry lives until the token's `exp` plus the issuer's clock skew, and
//!   never longer than [`MAX_ENTRY_TTL`];
//! - only successful checks are ever stored: there is no negative cache.
//!
//! On a later call every step of the pipeline runs again except the
//! signature check itself: the token is decoded, its issuer must still be
//! trusted, its algorithm still allowed, the issuer's keys still usable,
//! and the key lookup (by `kid` and algorithm) must return *the same key
//! object* as the entry names. When a key leaves its issuer's key set (a
//! rotation, or the issuer is no longer trusted), the lookup can no longer
//! return it, so its entries are never used again (and are dropped when
//! looked at). The policy (token kind, time, `azp`, `aud`, `role`, per-call
//! expectations) is applied on every call. The cache can therefore save
//! work, never change an answer: a signature check is a pure function of
//! (key, algorithm, token bytes), and that is exactly what is memoised.
//!
//! Why not the whole verified token: a [`VerifiedToken`](super::VerifiedToken)
//! of a typical Clerk session token takes about 920 bytes of heap (its
//! claims are owned strings, plus the payload), so 100 000 of them would
//! not fit the service's 64 MiB memory budget; an entry here is a digest, a
//! pointer, an algorithm and a deadline (under 100 bytes with the table's
//! own overhead). Decoding the token again costs about as much as the
//! digest that finds the entry, a few percent of a signature check.
//!
//! Eviction is quick_cache's S3-FIFO, which resists scans: a flood of
//! one-off tokens passes through the small probation queue and does not
//! push out tokens that are seen again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, SHA256_OUTPUT_LEN, digest};

use crate::keys::jwk::{Algorithm, VerificationKey};

/// Default number of cached tokens (`--token-cache-size`).
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 100_000;

/// Largest accepted `--token-cache-size`.
pub const MAX_TOKEN_CACHE_SIZE: usize = 10_000_000;

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

/// A bounded, concurrent memo of successful signature checks (see the
/// module documentation).
pub struct TokenCache {
    entries: quick_cache::sync::Cache<TokenDigest, Verified>,
    capacity: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; `None` when `capacity` is 0
    /// (caching disabled).
    pub fn new(capacity: usize) -> Option<TokenCache> {
        (capacity > 0).then(|| TokenCache { entries: quick_cache::sync::Cache::new(capacity), capacity })
    }

    /// Whether the token with `digest` was verified with exactly `key`
    /// (the same parsed key object) and `alg`, and the entry is still
    /// within its lifetime at `now` (Unix seconds). An entry that no
    /// longer fits is dropped.
    pub fn verified(&self, digest: &TokenDigest, key: &Arc<VerificationKey>, alg: Algorithm, now: i64) -> bool {
        let Some(entry) = self.entries.get(digest) else {
            return false;
        };
        if std::ptr::eq(entry.key.as_ptr(), Arc::as_ptr(key)) && entry.alg == alg && now < entry.until {
            return true;
        }
        // Expired, or verified with a key (or algorithm) this lookup did not
        // choose: useless from now on.
        self.entries.remove(digest);
        false
    }

    /// Remembers that the token with `digest` verified with `key` and `alg`,
    /// until `until` (Unix seconds; capped at [`MAX_ENTRY_TTL`] after `now`).
    /// Nothing is stored when `until` is not after `now`.
    pub fn insert(&self, digest: TokenDigest, key: &Arc<VerificationKey>, alg: Algorithm, until: i64, now: i64) {
        let cap = now.saturating_add(MAX_ENTRY_TTL.as_secs() as i64);
        let until = until.min(cap);
        if until > now {
            self.entries.insert(digest, Verified { key: Arc::downgrade(key), alg, until });
        }
    }

    /// The most tokens kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens currently kept (including expired ones not yet looked at or
    /// evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.entries.clear();
    }
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
        let entry = cache.entries.peek(&d).unwrap();
        assert!(entry.key.upgrade().is_none(), "the key material is freed");
        // The weak reference pins the old allocation: no new key can take
        // its address and be mistaken for it.
        let fresh: Vec<_> = (0..50).map(|_| key(Algorithm::EdDSA)).collect();
        for f in &fresh {
            assert!(!std::ptr::eq(entry.key.as_ptr(), Arc::as_ptr(f)));
        }
        assert!(!cache.verified(&d, &fresh[0], Algorithm::EdDSA, 0));
    }

    #[test]
    fn capacity_is_a_bound() {
        let cache = TokenCache::new(1000).unwrap();
        let k = key(Algorithm::EdDSA);
        for i in 0..10_000 {
            cache.insert(TokenDigest::of(&i.to_string()), &k, Algorithm::EdDSA, 100, 0);
        }
        assert!(cache.len() <= 1000, "{}", cache.len());
    }
}
