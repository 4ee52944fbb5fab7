//! Key discovery and refresh through a real HTTP issuer: rotation, the
//! unknown-kid flood, outages at start and after load, staleness, and the
//! discovery rules.

use std::sync::Arc;
use std::time::Duration;

use clerk_introspect::keys::{KeyStatus, Trigger};
use clerk_introspect::pb::Reason;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use serde_json::json;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Server, issuer_config};

fn keys_of(server: &Server, issuer: &TestIssuer) -> Arc<clerk_introspect::keys::IssuerKeys> {
    server.app.verifier.trust().get(issuer.issuer()).unwrap().keys.clone()
}

#[tokio::test]
async fn rotation_is_picked_up_by_the_first_token_signed_with_the_new_key() {
    let old = TestKey::rsa("ins_old");
    let issuer = TestIssuer::start(vec![old.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    assert_eq!(server.reason(&old.mint(&issuer.session_claims(server.now()))).await, Reason::Valid);

    // Seconds after start: the startup load did not start the cooldown.
    let new = TestKey::rsa("ins_new");
    issuer.set_keys(vec![new.clone()]);
    let before = issuer.jwks_requests();
    assert_eq!(server.reason(&new.mint(&issuer.session_claims(server.now()))).await, Reason::Valid);
    assert_eq!(issuer.jwks_requests(), before + 1, "one refetch");
    // The old key left the set: its tokens no longer verify.
    assert_eq!(server.reason(&old.mint(&issuer.session_claims(server.now()))).await, Reason::UnknownKey);
}

#[tokio::test]
async fn a_flood_of_random_kids_costs_the_issuer_one_request() {
    let key = TestKey::rsa("ins_real");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    // However slow the machine, the whole flood falls inside one cooldown.
    let mut config = issuer_config(&issuer);
    config.refresh.unknown_kid_cooldown = Duration::from_secs(3600);
    let server = Server::ready_with(vec![config]).await;
    let before = (issuer.discovery_requests(), issuer.jwks_requests());
    // Hold the refetch in flight so that callers pile up behind it.
    issuer.set_jwks_delay(Duration::from_millis(200));
    let claims = issuer.session_claims(server.now());
    let attacker = TestKey::rsa("unused");
    let mut calls = Vec::new();
    for i in 0..300 {
        let header = json!({"alg": "RS256", "kid": format!("random-{i}-{}", fastrand::u64(..))});
        let token = attacker.mint_with_header(&header, &claims);
        let client = server.client();
        calls.push(tokio::spawn(async move {
            let mut client = client;
            client
                .verify(clerk_introspect::pb::VerifyRequest { token, expect: None })
                .await
                .map(|r| r.into_inner().reason)
        }));
    }
    for call in calls {
        assert_eq!(Reason::try_from(call.await.unwrap().unwrap()).unwrap(), Reason::UnknownKey);
    }
    let after = (issuer.discovery_requests(), issuer.jwks_requests());
    assert_eq!(after.0, before.0, "no discovery for an unknown kid");
    assert_eq!(after.1 - before.1, 1, "300 callers, one JWKS request");
    // The real key still verifies throughout.
    assert_eq!(server.reason(&key.mint(&claims)).await, Reason::Valid);
}

#[tokio::test]
async fn unknown_kid_refetches_are_rate_limited_per_issuer() {
    let key = TestKey::rsa("ins_real");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    // A cooldown no test run can outlast, however loaded the machine.
    let mut config = issuer_config(&issuer);
    config.refresh.unknown_kid_cooldown = Duration::from_secs(3600);
    let server = Server::ready_with(vec![config]).await;
    let claims = issuer.session_claims(server.now());
    let before = issuer.jwks_requests();
    let stranger = TestKey::rsa("x");
    for i in 0..20 {
        let t = stranger.mint_with_header(&json!({"alg": "RS256", "kid": format!("k{i}")}), &claims);
        assert_eq!(server.reason(&t).await, Reason::UnknownKey);
    }
    assert_eq!(issuer.jwks_requests() - before, 1, "sequential misses within the cooldown: one refetch");
    // A new key published during the cooldown is found by the next scheduled
    // refresh (here: triggered directly).
    let new = TestKey::rsa("ins_new");
    issuer.add_key(new.clone());
    assert_eq!(server.reason(&new.mint(&claims)).await, Reason::UnknownKey, "still in the cooldown");
    keys_of(&server, &issuer).refresh(Trigger::Scheduled).await.unwrap();
    assert_eq!(server.reason(&new.mint(&claims)).await, Reason::Valid);
}

#[tokio::test]
async fn without_a_cooldown_each_miss_refetches() {
    // The mechanism under the limit: a zero cooldown (not allowed by the CLI) refetches every time.
    let key = TestKey::rsa("ins_real");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = issuer_config(&issuer);
    config.refresh.unknown_kid_cooldown = Duration::ZERO;
    let server = Server::ready_with(vec![config]).await;
    let claims = issuer.session_claims(server.now());
    let before = issuer.jwks_requests();
    let stranger = TestKey::rsa("x");
    for i in 0..3 {
        let t = stranger.mint_with_header(&json!({"alg": "RS256", "kid": format!("k{i}")}), &claims);
        assert_eq!(server.reason(&t).await, Reason::UnknownKey);
    }
    assert_eq!(issuer.jwks_requests() - before, 3);
}

#[tokio::test]
async fn issuer_down_at_start_then_up() {
    let key = TestKey::es256("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let server = Server::start(vec![issuer_config(&issuer)]).await;
    // Retried with backoff meanwhile; the process keeps serving the API.
    server.wait_for(ServingStatus::NotServing).await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let status = server.verify_with(&token, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(issuer.issuer()), "{}", status.message());
    let status = server.get_claims(&token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // A token from an issuer we do not trust is still a normal answer.
    let mut other = issuer.session_claims(server.now());
    other["iss"] = json!("https://clerk.other.example.com");
    assert_eq!(server.reason(&key.mint(&other)).await, Reason::UntrustedIssuer);
    // So is a token without iss: it names no trusted issuer to be unavailable.
    other.as_object_mut().unwrap().remove("iss");
    assert_eq!(server.reason(&key.mint(&other)).await, Reason::UntrustedIssuer);

    issuer.set_up(true);
    server.wait_for(ServingStatus::Serving).await;
    assert_eq!(server.reason(&token).await, Reason::Valid);
}

#[tokio::test]
async fn issuer_outage_after_load_keeps_the_last_good_keys() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    // Refresh often, so that the refresher itself meets the outage.
    let mut config = issuer_config(&issuer);
    config.refresh.interval = Duration::from_millis(50);
    let server = Server::ready_with(vec![config]).await;
    let keys = keys_of(&server, &issuer);

    issuer.set_up(false);
    let failing_since = issuer.jwks_requests() + issuer.discovery_requests();
    let deadline = tokio::time::Instant::now() + crate::support::READY_TIMEOUT;
    while keys.last_error().await.is_none() || issuer.jwks_requests() + issuer.discovery_requests() < failing_since + 2
    {
        assert!(tokio::time::Instant::now() < deadline, "the refresher never met the outage");
        tokio::time::sleep(crate::support::POLL).await;
    }
    assert_eq!(keys.status(), KeyStatus::Ready);
    assert_eq!(server.reason(&key.mint(&issuer.session_claims(server.now()))).await, Reason::Valid);
    // An unknown kid during the outage is an unknown key, not an outage.
    let stranger = TestKey::rsa("ins_stranger").mint(&issuer.session_claims(server.now()));
    assert_eq!(server.reason(&stranger).await, Reason::UnknownKey);
    assert_eq!(server.health("").await.unwrap(), ServingStatus::Serving);

    // Past the allowed staleness (24 h by default) the issuer has no keys.
    server.clock.advance(Duration::from_secs(24 * 3600 + 1));
    server.wait_for(ServingStatus::NotServing).await;
    assert_eq!(keys.status(), KeyStatus::Stale);
    let fresh = key.mint(&issuer.session_claims(server.now()));
    assert_eq!(server.verify_with(&fresh, None).await.unwrap_err().code(), Code::Unavailable);

    // Back up: the next retry loads keys and readiness returns.
    issuer.set_up(true);
    server.wait_for(ServingStatus::Serving).await;
    assert_eq!(server.reason(&fresh).await, Reason::Valid);
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_discovery_issuer(Some("https://clerk.somewhere-else.com".into()));
    let server = Server::start(vec![issuer_config(&issuer)]).await;
    let keys = keys_of(&server, &issuer);
    let err = keys.refresh(Trigger::Startup).await.unwrap_err().to_string();
    assert!(err.contains("https://clerk.somewhere-else.com") && err.contains("must be equal"), "{err}");
    assert_eq!(issuer.jwks_requests(), 0, "no keys are fetched for a mismatched issuer");
    assert_eq!(server.health("").await.unwrap(), ServingStatus::NotServing);
    let token = key.mint(&issuer.session_claims(server.now()));
    assert_eq!(server.verify_with(&token, None).await.unwrap_err().code(), Code::Unavailable);
    assert!(keys.last_error().await.unwrap().contains("must be equal"));
}

#[tokio::test]
async fn hostile_jwks_documents_are_refused() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let keys = keys_of(&server, &issuer);
    let token = key.mint(&issuer.session_claims(server.now()));

    let huge = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let many = json!({"keys": vec![key.jwk().clone(); 101]}).to_string();
    let only_bad = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, key.jwk_with(json!({"use": "enc"}))]}).to_string();
    for (body, want) in
        [(huge, "more than"), (many, "101 keys"), (only_bad, "no usable signing key"), ("<html>".into(), "not a JWKS")]
    {
        issuer.set_jwks_body(Some(body.into_bytes()));
        let err = keys.refresh(Trigger::Scheduled).await.unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        // The last good keys stay.
        assert_eq!(server.reason(&token).await, Reason::Valid);
    }
}

#[tokio::test]
async fn skipped_keys_do_not_fail_the_set() {
    let good = TestKey::es256("ins_good");
    let issuer = TestIssuer::start(vec![good.clone()]).await.unwrap();
    let body = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        good.jwk_with(json!({"kid": "enc", "use": "enc"})),
        good.jwk(),
    ]});
    issuer.set_jwks_body(Some(body.to_string().into_bytes()));
    let server = Server::ready(&issuer).await;
    assert_eq!(server.reason(&good.mint(&issuer.session_claims(server.now()))).await, Reason::Valid);
    let enc = good.mint_with_header(&json!({"alg": "ES256", "kid": "enc"}), &issuer.session_claims(server.now()));
    assert_eq!(server.reason(&enc).await, Reason::UnknownKey);
}

#[tokio::test]
async fn cache_control_sets_the_refresh_interval_within_bounds() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let keys = keys_of(&server, &issuer);
    for (header, want) in [
        (Some("public, max-age=600"), 600),
        (Some("max-age=5"), 60),
        (Some("max-age=86400"), 3600),
        (Some("no-store"), 60),
        (None, 300),
    ] {
        issuer.set_cache_control(header.map(str::to_owned));
        let next = keys.refresh(Trigger::Scheduled).await.unwrap();
        assert_eq!(next, Duration::from_secs(want), "{header:?}");
    }
}

#[tokio::test]
async fn key_urls_in_headers_are_never_fetched() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let attacker_key = TestKey::rsa("ins_test");
    let attacker = TestIssuer::start(vec![attacker_key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let header = json!({"alg": "RS256", "kid": "ins_test", "jku": attacker.jwks_uri(), "x5u": attacker.jwks_uri(), "jwk": attacker_key.jwk()});
    let token = attacker_key.mint_with_header(&header, &issuer.session_claims(server.now()));
    assert_eq!(server.reason(&token).await, Reason::BadSignature);
    let unknown = TestKey::rsa("x").mint_with_header(
        &json!({"alg": "RS256", "kid": "ins_attacker", "jku": attacker.jwks_uri()}),
        &issuer.session_claims(server.now()),
    );
    assert_eq!(server.reason(&unknown).await, Reason::UnknownKey);
    assert_eq!((attacker.discovery_requests(), attacker.jwks_requests()), (0, 0));
}

/// Log lines written while `f` runs on this thread (the server runs on the
/// test's current-thread runtime, so its lines are caught too).
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl Lines {
    fn capture() -> (Lines, tracing::subscriber::DefaultGuard) {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Writer(writer.clone()))
            .finish();
        (Lines(buffer), tracing::subscriber::set_default(subscriber))
    }

    /// The lines that contain `text`.
    fn with(&self, text: &str) -> Vec<String> {
        let all = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        all.lines().filter(|l| l.contains(text)).map(str::to_owned).collect()
    }
}

struct Writer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 17, finding 6: an outage longer than the allowed staleness ends
/// with the issuer's return, not with the refresher's backoff: a call that
/// finds the issuer without usable keys starts a fetch (at most one a
/// second, shared by all calls), and readiness follows. Meanwhile the calls'
/// WARN line and the failed fetches' are logged once per 10 s, with counts.
#[tokio::test]
async fn an_outage_past_the_staleness_ends_when_the_issuer_returns() {
    let (lines, _guard) = Lines::capture();
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    // A refresher that would not try again within this test: what recovers
    // is the calls' fetch.
    let mut config = issuer_config(&issuer);
    config.refresh.initial_backoff = Duration::from_secs(600);
    config.refresh.max_backoff = Duration::from_secs(600);
    let server = Server::ready_with(vec![config]).await;

    issuer.set_up(false);
    server.clock.advance(Duration::from_secs(24 * 3600 + 1));
    server.wait_for(ServingStatus::NotServing).await;
    let requests = || issuer.jwks_requests() + issuer.discovery_requests();
    let before = requests();
    let token = key.mint(&issuer.session_claims(server.now()));
    let started = std::time::Instant::now();
    for _ in 0..300 {
        assert_eq!(server.verify_with(&token, None).await.unwrap_err().code(), Code::Unavailable);
    }
    let seconds = started.elapsed().as_secs() as usize;
    let fetches = requests() - before;
    assert!(fetches >= 1, "the calls started a fetch");
    assert!(fetches <= 2 * (seconds + 1), "{fetches} requests to the issuer in {seconds} s: at most a fetch a second");
    let warned = lines.with("verification unavailable");
    assert!(!warned.is_empty() && warned.len() <= seconds / 10 + 1, "300 calls, {} lines: {warned:#?}", warned.len());
    assert!(warned[0].contains("WARN") && warned[0].contains("unavailable_since_last_report=0"), "{warned:#?}");
    assert!(warned[0].contains("keys=\"stale\"") || warned[0].contains("keys=stale"), "{warned:#?}");
    let failed = lines.with("key fetch failed");
    assert!(!failed.is_empty() && failed.len() <= seconds / 10 + 1, "{failed:#?}");

    issuer.set_up(true);
    let deadline = tokio::time::Instant::now() + crate::support::READY_TIMEOUT;
    loop {
        match server.verify_with(&token, None).await {
            Ok(answer) => {
                assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::Valid, "{}", answer.message);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable),
        }
        // A guard against a hang; without the calls' fetch, 600 s.
        assert!(tokio::time::Instant::now() < deadline, "answers never came back");
        tokio::time::sleep(crate::support::POLL).await;
    }
    server.wait_for(ServingStatus::Serving).await;
    assert_eq!(lines.with("keys fetched again after failed fetches").len(), 1);
    // The next outage is logged from its first call on.
    issuer.set_up(false);
    server.clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert_eq!(server.verify_with(&token, None).await.unwrap_err().code(), Code::Unavailable);
    let warned = lines.with("verification unavailable");
    assert!(warned.last().unwrap().contains("unavailable_since_last_report=0"), "{warned:#?}");
}
