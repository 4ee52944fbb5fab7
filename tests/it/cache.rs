//! The verified-token cache never changes an answer: the same tokens are
//! verified with the cache on and off, through expiry, key rotation (keys
//! removed, and a kid reused by a new key), policy changes, issuer removal
//! and per-call expectations, and every answer is compared. Then once more
//! through gRPC, against two real servers (cache on, cache off).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clerk_introspect::clock::{Clock, ManualClock};
use clerk_introspect::config::Config;
use clerk_introspect::keys::fetch::Fetcher;
use clerk_introspect::keys::jwk::{Algorithm, AlgorithmSet, key_from_jwk_json};
use clerk_introspect::keys::{IssuerKeys, KeyContext, KeySource, NoopObserver, RefreshSettings, Trigger};
use clerk_introspect::pb::{self, Reason};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use clerk_introspect::verify::cache::TokenCache;
use clerk_introspect::verify::{Expectations, Policy, Trust, TrustedIssuer, VerifiedToken, Verifier, VerifyError};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Server, issuer_config};

const STATIC_ISS: &str = "https://clerk.static.example.com";

/// Everything an answer says, for comparison (the key by identity too).
fn answer(outcome: &Result<Arc<VerifiedToken>, VerifyError>) -> String {
    match outcome {
        Ok(t) => format!(
            "valid {} {:?} {:p} {} {:?} {:?} {}",
            t.issuer,
            t.key.kid(),
            Arc::as_ptr(&t.key),
            t.algorithm,
            t.kind,
            t.claims,
            t.payload
        ),
        Err(VerifyError::Rejected(r)) => format!("rejected {r}"),
        Err(VerifyError::Unavailable { issuer }) => format!("unavailable {issuer}"),
    }
}

/// Verifiers over the same trust, keys and clock: one without a cache, one
/// with the default two-tier cache, one that keeps signature checks only.
struct Pair {
    cached: Verifier,
    signatures_only: Verifier,
    plain: Verifier,
    compared: usize,
    valid: usize,
}

impl Pair {
    fn new(trust: Trust, clock: Arc<ManualClock>) -> Pair {
        let signatures_only = TokenCache::with_token_bytes(1000, 0);
        Pair {
            cached: Verifier::with_token_cache(trust.clone(), clock.clone(), 1000),
            signatures_only: Verifier::with_cache(trust.clone(), clock.clone(), signatures_only),
            plain: Verifier::new(trust, clock),
            compared: 0,
            valid: 0,
        }
    }

    fn set_trust(&self, trust: Trust) {
        self.cached.set_trust(trust.clone());
        self.signatures_only.set_trust(trust.clone());
        self.plain.set_trust(trust);
    }

    /// Verifies `token` with each (the cached ones twice, so that the second
    /// call can be a hit) and asserts that all answers agree.
    async fn check(&mut self, what: &str, token: &str, expect: &Expectations<'_>) -> String {
        let first = answer(&self.cached.verify(token, expect).await);
        let sig_first = answer(&self.signatures_only.verify(token, expect).await);
        let plain = answer(&self.plain.verify(token, expect).await);
        let again = answer(&self.cached.verify(token, expect).await);
        let sig_again = answer(&self.signatures_only.verify(token, expect).await);
        assert_eq!(first, plain, "{what}: cache on (first call) vs off");
        assert_eq!(again, plain, "{what}: cache on (second call) vs off");
        assert_eq!(sig_first, plain, "{what}: signature cache (first call) vs off");
        assert_eq!(sig_again, plain, "{what}: signature cache (second call) vs off");
        self.compared += 1;
        if plain.starts_with("valid") {
            self.valid += 1;
        }
        plain
    }
}

fn ctx(clock: Arc<ManualClock>) -> KeyContext {
    KeyContext {
        fetcher: Fetcher::new().unwrap(),
        clock,
        observer: Arc::new(NoopObserver),
        changed: Arc::new(Notify::new()),
    }
}

fn claims(iss: &str, now: SystemTime, lifetime: u64, extra: Value) -> Value {
    let iat = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut c = json!({
        "azp": "https://app.example.com",
        "aud": ["api", "web"],
        "exp": iat + lifetime,
        "iat": iat,
        "iss": iss,
        "nbf": iat - 5,
        "role": "authenticated",
        "sid": "sess_1",
        "sts": "active",
        "sub": "user_1",
        "jti": fastrand::u64(..).to_string(),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_cache_never_changes_an_answer() {
    let clock = Arc::new(ManualClock::starting_now());
    let (rs, es, ed) = (TestKey::rsa("rs"), TestKey::es256("es"), TestKey::generate("ed", Algorithm::EdDSA));
    let issuer = TestIssuer::start(vec![rs.clone(), es.clone(), ed.clone()]).await.unwrap();
    let iss = issuer.issuer().to_owned();
    let fetched = IssuerKeys::start(
        Arc::from(iss.as_str()),
        KeySource::Discovery,
        RefreshSettings::default(),
        ctx(clock.clone()),
    );
    fetched.refresh(Trigger::Startup).await.unwrap();
    let st = TestKey::es256("st");
    let static_keys = IssuerKeys::start(
        Arc::from(STATIC_ISS),
        KeySource::Static(vec![Arc::new(key_from_jwk_json(st.jwk()).unwrap())]),
        RefreshSettings::default(),
        ctx(clock.clone()),
    );
    let trusted =
        |policy: Policy, keys: &Arc<IssuerKeys>| TrustedIssuer { policy: Arc::new(policy), keys: keys.clone() };
    let both = |p: Policy| Trust::new([trusted(p.clone(), &fetched), trusted(p, &static_keys)]);
    let mut pair = Pair::new(both(Policy::default()), clock.clone());

    let now = clock.now();
    let mut tokens: Vec<(&str, String)> = vec![
        ("rs256", rs.mint(&claims(&iss, now, 60, json!({})))),
        ("es256", es.mint(&claims(&iss, now, 60, json!({})))),
        ("eddsa", ed.mint(&claims(&iss, now, 60, json!({})))),
        ("static issuer", st.mint(&claims(STATIC_ISS, now, 60, json!({})))),
        ("short-lived", rs.mint(&claims(&iss, now, 10, json!({})))),
        ("long-lived", es.mint(&claims(&iss, now, 3600, json!({})))),
        ("no azp", rs.mint(&claims(&iss, now, 60, json!({"azp": null})))),
        ("no aud", es.mint(&claims(&iss, now, 60, json!({"aud": null})))),
        ("service_role", rs.mint(&claims(&iss, now, 60, json!({"role": "service_role"})))),
        ("admin role", es.mint(&claims(&iss, now, 60, json!({"role": "admin"})))),
        ("pending", rs.mint(&claims(&iss, now, 60, json!({"sts": "pending"})))),
        ("no exp", rs.mint(&claims(&iss, now, 60, json!({"exp": null})))),
        (
            "nbf ahead",
            es.mint(&claims(&iss, now, 60, json!({"nbf": now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 20}))),
        ),
        ("no iss", rs.mint(&claims(&iss, now, 60, json!({"iss": null})))),
        ("other iss", rs.mint(&claims("https://evil.example.com", now, 60, json!({})))),
        ("machine", rs.mint(&claims(&iss, now, 60, json!({"sub": "mch_1"})))),
        (
            "jwt template",
            rs.mint_with_header(
                &json!({"alg": "RS256", "kid": "rs", "cat": "cl_B7d4PD222AAA"}),
                &claims(&iss, now, 60, json!({})),
            ),
        ),
        ("no kid", st.mint_with_header(&json!({"alg": "ES256"}), &claims(STATIC_ISS, now, 60, json!({})))),
        ("no kid, fetched", ed.mint_with_header(&json!({"alg": "EdDSA"}), &claims(&iss, now, 3600, json!({})))),
        ("wrong key", rs.mint_with_header(&json!({"alg": "ES256", "kid": "es"}), &claims(&iss, now, 60, json!({})))),
    ];
    // The same payload with another signature, and a flipped signature byte.
    let good = tokens[0].1.clone();
    let (input, _) = good.rsplit_once('.').unwrap();
    let forged = TestKey::rsa("rs").mint(&serde_json::from_slice(&base64_payload(input)).unwrap());
    tokens.push(("forged", forged));
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    tokens.push(("flipped", String::from_utf8(flipped).unwrap()));
    tokens.push(("bearer", format!("Bearer {good}")));
    tokens.push(("garbage", "a.b.c".to_owned()));

    let (azp, other_azp) = (strings(&["https://app.example.com"]), strings(&["https://other.example.com"]));
    let (aud, other_aud) = (strings(&["web"]), strings(&["billing"]));
    let (role, other_role) = (strings(&["authenticated"]), strings(&["admin"]));
    let expectations = [
        Expectations::default(),
        Expectations { authorized_parties: &azp, ..Default::default() },
        Expectations { authorized_parties: &other_azp, ..Default::default() },
        Expectations { audiences: &aud, ..Default::default() },
        Expectations { audiences: &other_aud, ..Default::default() },
        Expectations { roles: &role, ..Default::default() },
        Expectations { roles: &other_role, ..Default::default() },
        Expectations { authorized_parties: &azp, audiences: &aud, roles: &role },
    ];

    // Fresh tokens: valid, and every kind of rejection.
    let first = round(&mut pair, &tokens, &expectations).await;
    assert!(first.iter().any(|a| a.starts_with("valid")) && first.iter().any(|a| a.contains("REASON_BAD_SIGNATURE")));
    let (cache, sigs) = (pair.cached.token_cache().unwrap(), pair.signatures_only.token_cache().unwrap());
    assert!(cache.tokens_len() > 0 && cache.signatures_len() > 0, "both tiers are in use");
    assert!(sigs.tokens_len() == 0 && sigs.signatures_len() > 0, "signature checks only");

    // Time passes: the nbf token becomes valid, then the short-lived one expires.
    clock.advance(Duration::from_secs(16));
    round(&mut pair, &tokens, &expectations).await;
    clock.advance(Duration::from_secs(2));
    let expired = round(&mut pair, &tokens, &expectations).await;
    assert!(expired.iter().any(|a| a.contains("REASON_EXPIRED")));

    // Policy change (same keys): ES256 no longer allowed, admin allowed, skew 0.
    let narrowed = Policy {
        algorithms: AlgorithmSet::all().iter().filter(|a| *a != Algorithm::ES256).collect(),
        roles: strings(&["authenticated", "admin"]),
        clock_skew: Duration::ZERO,
        ..Policy::default()
    };
    pair.set_trust(both(narrowed));
    round(&mut pair, &tokens, &expectations).await;
    pair.set_trust(both(Policy::default()));

    // Rotation: the EdDSA key leaves; the RSA kid is reused by a new key.
    let rs_new = TestKey::rsa("rs");
    issuer.set_keys(vec![rs_new.clone(), es.clone()]);
    fetched.refresh(Trigger::Scheduled).await.unwrap();
    let rotated = round(&mut pair, &tokens, &expectations).await;
    assert!(rotated.iter().any(|a| a.contains("REASON_UNKNOWN_KEY")), "the EdDSA key is gone");
    let fresh = rs_new.mint(&claims(&iss, clock.now(), 60, json!({})));
    assert!(pair.check("new rs key", &fresh, &Expectations::default()).await.starts_with("valid"));
    assert!(pair.check("old rs token", &good, &Expectations::default()).await.contains("REASON_BAD_SIGNATURE"));

    // The old keys come back (new objects, as after any refetch of a removed key).
    issuer.set_keys(vec![rs.clone(), es.clone(), ed.clone()]);
    fetched.refresh(Trigger::Scheduled).await.unwrap();
    round(&mut pair, &tokens, &expectations).await;

    // A second EdDSA key: a token without a kid no longer names one key.
    let unkeyed = tokens.iter().find(|(w, _)| *w == "no kid, fetched").unwrap().1.clone();
    assert!(pair.check("one EdDSA key", &unkeyed, &Expectations::default()).await.starts_with("valid"));
    issuer.set_keys(vec![rs.clone(), es.clone(), ed.clone(), TestKey::generate("ed2", Algorithm::EdDSA)]);
    fetched.refresh(Trigger::Scheduled).await.unwrap();
    let two = pair.check("two EdDSA keys", &unkeyed, &Expectations::default()).await;
    assert!(two.contains("REASON_ALGORITHM_NOT_ALLOWED") || two.contains("REASON_UNKNOWN_KEY"), "{two}");
    issuer.set_keys(vec![rs.clone(), es.clone(), ed.clone()]);
    fetched.refresh(Trigger::Scheduled).await.unwrap();

    // The fetched issuer is no longer trusted, then trusted again.
    pair.set_trust(Trust::new([trusted(Policy::default(), &static_keys)]));
    let removed = round(&mut pair, &tokens, &expectations).await;
    assert!(removed.iter().any(|a| a.contains("REASON_UNTRUSTED_ISSUER")));
    pair.set_trust(both(Policy::default()));
    round(&mut pair, &tokens, &expectations).await;

    // Long after: everything but the long-lived token expired.
    clock.advance(Duration::from_secs(600));
    round(&mut pair, &tokens, &expectations).await;
    assert!(pair.valid > 50, "valid answers compared: {}", pair.valid);
    assert!(pair.compared > 1000, "answers compared: {}", pair.compared);
}

/// A random walk over the same operations, compared at every step.
#[tokio::test]
async fn random_operations_never_make_the_answers_differ() {
    let clock = Arc::new(ManualClock::starting_now());
    let keys: Vec<TestKey> = vec![
        TestKey::rsa("a"),
        TestKey::es256("b"),
        TestKey::generate("c", Algorithm::EdDSA),
        TestKey::rsa("d"),
        TestKey::es256("a"),
    ];
    let issuer = TestIssuer::start(keys[..3].to_vec()).await.unwrap();
    let iss = issuer.issuer().to_owned();
    let fetched = IssuerKeys::start(
        Arc::from(iss.as_str()),
        KeySource::Discovery,
        RefreshSettings::default(),
        ctx(clock.clone()),
    );
    fetched.refresh(Trigger::Startup).await.unwrap();
    let trust_with = |p: Policy| Trust::new([TrustedIssuer { policy: Arc::new(p), keys: fetched.clone() }]);
    let mut pair = Pair::new(trust_with(Policy::default()), clock.clone());
    let mut rng = fastrand::Rng::with_seed(6);
    let roles = [strings(&[]), strings(&["authenticated"]), strings(&["admin"])];
    let mut tokens: Vec<String> = Vec::new();
    for step in 0..400 {
        match rng.u8(..20) {
            0..=3 => {
                let key = &keys[rng.usize(..keys.len())];
                let role = ["authenticated", "admin"][rng.usize(..2)];
                tokens.push(key.mint(&claims(&iss, clock.now(), rng.u64(1..90), json!({"role": role}))));
            }
            4 => clock.advance(Duration::from_secs(rng.u64(..30))),
            5 => {
                let published: Vec<TestKey> = keys.iter().filter(|_| rng.bool()).cloned().collect();
                if !published.is_empty() {
                    issuer.set_keys(published);
                    let _ = fetched.refresh(Trigger::Scheduled).await;
                }
            }
            6 => {
                let policy = Policy {
                    roles: if rng.bool() { strings(&["authenticated"]) } else { strings(&["authenticated", "admin"]) },
                    clock_skew: Duration::from_secs(rng.u64(..10)),
                    algorithms: Algorithm::ALL.into_iter().filter(|_| rng.u8(..4) > 0).collect(),
                    ..Policy::default()
                };
                pair.set_trust(if rng.u8(..5) == 0 { Trust::default() } else { trust_with(policy) });
            }
            _ if !tokens.is_empty() => {
                let token = tokens[rng.usize(..tokens.len())].clone();
                let expect = Expectations { roles: &roles[rng.usize(..roles.len())], ..Default::default() };
                pair.check(&format!("step {step}"), &token, &expect).await;
            }
            _ => {}
        }
    }
    assert!(pair.valid > 20, "valid answers compared: {} of {}", pair.valid, pair.compared);
}

/// Every token with every expectation.
async fn round(pair: &mut Pair, tokens: &[(&str, String)], expectations: &[Expectations<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for (what, token) in tokens {
        for e in expectations {
            out.push(pair.check(what, token, e).await);
        }
    }
    out
}

fn base64_payload(input: &str) -> Vec<u8> {
    use base64::Engine as _;
    let (_, payload) = input.split_once('.').unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()
}

/// Through gRPC: a server with the default cache and one without answer
/// every call the same, through expiry and a rotation.
#[tokio::test]
async fn servers_with_and_without_the_cache_answer_alike() {
    let old = TestKey::rsa("ins_old");
    let issuer = TestIssuer::start(vec![old.clone()]).await.unwrap();
    let cached = Server::start(vec![issuer_config(&issuer)]).await;
    let mut off = Config::new(vec![issuer_config(&issuer)]);
    off.token_cache_size = 0;
    let plain = Server::start_with(off).await;
    for s in [&cached, &plain] {
        s.wait_for(ServingStatus::Serving).await;
        s.clock.set(cached.now());
    }
    assert!(cached.app.verifier.token_cache().is_some() && plain.app.verifier.token_cache().is_none());

    let token = old.mint(&issuer.session_claims(cached.now()));
    let expect = |azp: &str| Some(pb::Expectations { authorized_parties: vec![azp.to_owned()], ..Default::default() });
    let compare = |what: &'static str, token: String, e: Option<pb::Expectations>| {
        let (cached, plain) = (&cached, &plain);
        async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let a = cached.verify_with(&token, e.clone()).await.map_err(|s| s.code());
                let b = plain.verify_with(&token, e.clone()).await.map_err(|s| s.code());
                assert_eq!(a, b, "{what}");
                let c = cached.get_claims(&token).await.map_err(|s| s.message().to_owned());
                let d = plain.get_claims(&token).await.map_err(|s| s.message().to_owned());
                assert_eq!(c, d, "{what} (GetClaims)");
                seen.push(a.map(|r| Reason::try_from(r.reason).unwrap()));
            }
            seen[0]
        }
    };
    assert_eq!(compare("valid", token.clone(), None).await, Ok(Reason::Valid));
    assert_eq!(compare("azp", token.clone(), expect("http://localhost:3000")).await, Ok(Reason::Valid));
    assert_eq!(compare("other azp", token.clone(), expect("https://x")).await, Ok(Reason::AuthorizedPartyMismatch));

    // Rotation: the first token signed with the new key refetches; the old
    // key's tokens are then unknown, on both servers.
    let new = TestKey::rsa("ins_new");
    issuer.set_keys(vec![new.clone()]);
    let fresh = new.mint(&issuer.session_claims(cached.now()));
    assert_eq!(compare("new key", fresh.clone(), None).await, Ok(Reason::Valid));
    assert_eq!(compare("old key", token.clone(), None).await, Ok(Reason::UnknownKey));

    // Expiry (60 s tokens, 5 s skew).
    for s in [&cached, &plain] {
        s.clock.advance(Duration::from_secs(66));
    }
    assert_eq!(compare("expired", fresh, None).await, Ok(Reason::Expired));
}

/// Records every `cached` value recorded on a span.
struct CachedField(Arc<std::sync::Mutex<Vec<bool>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CachedField {
    fn on_record(
        &self,
        _span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit<'a>(&'a std::sync::Mutex<Vec<bool>>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
                if field.name() == "cached" {
                    self.0.lock().unwrap().push(value);
                }
            }
            fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn std::fmt::Debug) {}
        }
        values.record(&mut Visit(&self.0));
    }
}

#[tokio::test]
async fn whether_the_signature_check_was_skipped_is_recorded_on_the_span() {
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(CachedField(seen.clone())));
    let clock = Arc::new(ManualClock::starting_now());
    let key = TestKey::es256("k");
    let keys = IssuerKeys::start(
        Arc::from(STATIC_ISS),
        KeySource::Static(vec![Arc::new(key_from_jwk_json(key.jwk()).unwrap())]),
        RefreshSettings::default(),
        ctx(clock.clone()),
    );
    let trust = Trust::new([TrustedIssuer { policy: Arc::new(Policy::default()), keys }]);
    let verifier = Verifier::with_token_cache(trust, clock.clone(), 10);
    let token = key.mint(&claims(STATIC_ISS, clock.now(), 60, json!({})));
    let forged = TestKey::es256("k").mint(&claims(STATIC_ISS, clock.now(), 60, json!({})));
    for t in [&token, &token, &forged, &forged, &token] {
        let span = tracing::info_span!("Verify", cached = tracing::field::Empty);
        let _ = verifier.verify(t, &Expectations::default()).instrument(span).await;
    }
    assert_eq!(*seen.lock().unwrap(), [false, true, false, false, true]);
}

/// Keys older than the allowed staleness make the issuer unavailable, for
/// tokens in the cache as for any other.
#[tokio::test]
async fn stale_keys_make_cached_tokens_unavailable_too() {
    let clock = Arc::new(ManualClock::starting_now());
    let key = TestKey::es256("k");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let settings = RefreshSettings { max_staleness: Duration::from_secs(60), ..RefreshSettings::default() };
    let keys = IssuerKeys::start(Arc::from(issuer.issuer()), KeySource::Discovery, settings, ctx(clock.clone()));
    keys.refresh(Trigger::Startup).await.unwrap();
    let trust = Trust::new([TrustedIssuer { policy: Arc::new(Policy::default()), keys: keys.clone() }]);
    let mut pair = Pair::new(trust, clock.clone());
    let token = key.mint(&claims(issuer.issuer(), clock.now(), 3600, json!({})));
    assert!(pair.check("fresh keys", &token, &Expectations::default()).await.starts_with("valid"));
    issuer.set_up(false);
    clock.advance(Duration::from_secs(61));
    assert!(keys.refresh(Trigger::Scheduled).await.is_err());
    let stale = pair.check("stale keys", &token, &Expectations::default()).await;
    assert!(stale.starts_with("unavailable"), "{stale}");
    issuer.set_up(true);
    keys.refresh(Trigger::Scheduled).await.unwrap();
    assert!(pair.check("fresh again", &token, &Expectations::default()).await.starts_with("valid"));
}
