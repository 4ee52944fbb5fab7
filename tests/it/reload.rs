//! Reload without a restart: `App::reload` in process (policy swaps keep
//! the key cache, in-flight calls finish, issuers come and go), and the
//! binary on SIGHUP and on a file change (a bad file keeps the old config).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clerk_introspect::config::{Config, IssuerConfig};
use clerk_introspect::pb::{Reason, VerifyRequest};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::scratch::{ServeProcess, run_bin, stderr, stdout};
use crate::support::{POLL, READY_TIMEOUT, Server, issuer_config};

fn with_roles(issuer: &TestIssuer, roles: &[&str]) -> IssuerConfig {
    let mut c = issuer_config(issuer);
    c.policy.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    c
}

fn editor_token(key: &TestKey, issuer: &TestIssuer, now: SystemTime) -> String {
    let mut claims = issuer.session_claims(now);
    claims["role"] = json!("editor");
    key.mint(&claims)
}

#[tokio::test]
async fn a_policy_swap_keeps_the_key_cache() {
    let key = TestKey::rsa("ins_reload");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::start(vec![with_roles(&issuer, &["authenticated"])]).await;
    server.wait_for(ServingStatus::Serving).await;
    let editor = editor_token(&key, &issuer, server.now());
    assert_eq!(server.reason(&editor).await, Reason::RoleNotAllowed);

    let cache_before = server.app.verifier.trust().get(issuer.issuer()).unwrap().keys.clone();
    let requests_before = (issuer.discovery_requests(), issuer.jwks_requests());
    let summary = server.app.reload(&Config::new(vec![with_roles(&issuer, &["authenticated", "editor"])])).unwrap();
    assert_eq!(summary.kept.len(), 1);
    assert_eq!(summary.policy_changed.len(), 1);
    assert!(summary.added.is_empty() && summary.removed.is_empty() && summary.new_key_source.is_empty());

    assert_eq!(server.reason(&editor).await, Reason::Valid, "the new policy applies at once");
    let cache_after = server.app.verifier.trust().get(issuer.issuer()).unwrap().keys.clone();
    assert!(Arc::ptr_eq(&cache_before, &cache_after), "the same key cache");
    assert_eq!((issuer.discovery_requests(), issuer.jwks_requests()), requests_before, "no refetch on reload");
    assert_eq!(server.health("").await.unwrap(), ServingStatus::Serving);

    // The same config again changes nothing.
    let summary = server.app.reload(&Config::new(vec![with_roles(&issuer, &["authenticated", "editor"])])).unwrap();
    assert!(summary.policy_changed.is_empty(), "{summary:?}");
}

#[tokio::test]
async fn a_new_key_source_or_timing_gets_a_new_cache() {
    let key = TestKey::rsa("ins_src");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready_with(vec![issuer_config(&issuer)]).await;
    let before = server.app.verifier.trust().get(issuer.issuer()).unwrap().keys.clone();
    let jwks_before = issuer.jwks_requests();

    let mut changed = issuer_config(&issuer);
    changed.source = clerk_introspect::keys::KeySource::JwksUri(issuer.jwks_uri());
    let summary = server.app.reload(&Config::new(vec![changed])).unwrap();
    assert_eq!(summary.new_key_source.len(), 1, "{summary:?}");
    let after = server.app.verifier.trust().get(issuer.issuer()).unwrap().keys.clone();
    assert!(!Arc::ptr_eq(&before, &after));
    server.wait_for(ServingStatus::Serving).await;
    assert!(issuer.jwks_requests() > jwks_before, "the new cache fetched");
    let token = key.mint(&issuer.session_claims(server.now()));
    assert!(server.verify(&token).await.valid);
}

#[tokio::test]
async fn issuers_can_be_added_and_removed() {
    let (ka, kb) = (TestKey::rsa("ins_a"), TestKey::rsa("ins_b"));
    let a = TestIssuer::start(vec![ka.clone()]).await.unwrap();
    let b = TestIssuer::start(vec![kb.clone()]).await.unwrap();
    let server = Server::ready_with(vec![issuer_config(&a)]).await;
    let token_a = ka.mint(&a.session_claims(server.now()));
    let token_b = kb.mint(&b.session_claims(server.now()));
    assert_eq!(server.reason(&token_b).await, Reason::UntrustedIssuer);

    // Add B, which is down at first: NOT_SERVING until its keys load.
    b.set_up(false);
    let summary = server.app.reload(&Config::new(vec![issuer_config(&a), issuer_config(&b)])).unwrap();
    assert_eq!(summary.added.len(), 1);
    server.wait_for(ServingStatus::NotServing).await;
    b.set_up(true);
    server.wait_for(ServingStatus::Serving).await;
    assert!(server.verify(&token_b).await.valid);
    assert!(server.verify(&token_a).await.valid);

    // Remove A: its tokens are no longer trusted, and its cache goes away.
    let a_cache = Arc::downgrade(&server.app.verifier.trust().get(a.issuer()).unwrap().keys);
    let summary = server.app.reload(&Config::new(vec![issuer_config(&b)])).unwrap();
    assert_eq!(summary.removed, vec![Arc::<str>::from(a.issuer())]);
    assert_eq!(server.reason(&token_a).await, Reason::UntrustedIssuer);
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while a_cache.upgrade().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the removed issuer's cache is dropped");
        tokio::time::sleep(POLL).await;
    }
    // (Dropping the cache cancels its refresher: A is never fetched again.)
}

#[tokio::test]
async fn an_in_flight_call_finishes_with_the_policy_it_started_with() {
    let key = TestKey::rsa("ins_flight");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::start(vec![with_roles(&issuer, &["authenticated"])]).await;
    server.wait_for(ServingStatus::Serving).await;
    // A token signed with a key the cache does not have yet: the call waits
    // for a (slow) unknown-kid refetch while the policy is swapped.
    let rotated = TestKey::rsa("ins_rotated");
    issuer.add_key(rotated.clone());
    issuer.set_jwks_delay(Duration::from_millis(300));
    let token = rotated.mint(&issuer.session_claims(server.now()));
    let jwks_before = issuer.jwks_requests();
    let mut client = server.client();
    let call = {
        let token = token.clone();
        tokio::spawn(async move { client.verify(VerifyRequest { token, expect: None }).await })
    };
    while issuer.jwks_requests() == jwks_before {
        tokio::time::sleep(POLL).await;
    }
    server.app.reload(&Config::new(vec![with_roles(&issuer, &["editor"])])).unwrap();
    let answer = call.await.unwrap().expect("the in-flight call is answered").into_inner();
    assert!(answer.valid, "it finished under the policy it started with: {}", answer.message);
    issuer.set_jwks_delay(Duration::ZERO);
    assert_eq!(server.reason(&token).await, Reason::RoleNotAllowed, "new calls get the new policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_never_fail_while_policies_are_swapped_back_and_forth() {
    let key = TestKey::rsa("ins_churn");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::start(vec![with_roles(&issuer, &["authenticated"])]).await;
    server.wait_for(ServingStatus::Serving).await;
    let token = editor_token(&key, &issuer, server.now());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut client = server.client();
        let token = token.clone();
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let mut seen = (0usize, 0usize);
            while !stop.is_cancelled() {
                let answer = client
                    .verify(VerifyRequest { token: token.clone(), expect: None })
                    .await
                    .expect("no call fails during a reload")
                    .into_inner();
                match Reason::try_from(answer.reason).unwrap() {
                    Reason::Valid => seen.0 += 1,
                    Reason::RoleNotAllowed => seen.1 += 1,
                    other => panic!("unexpected {other:?}: {}", answer.message),
                }
            }
            seen
        }));
    }
    let jwks_before = issuer.jwks_requests();
    for i in 0..40 {
        let roles: &[&str] = if i % 2 == 0 { &["authenticated", "editor"] } else { &["authenticated"] };
        server.app.reload(&Config::new(vec![with_roles(&issuer, roles)])).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let mut total = (0, 0);
    for c in callers {
        let (v, r) = c.await.unwrap();
        total = (total.0 + v, total.1 + r);
    }
    assert!(total.0 + total.1 > 0, "calls were made");
    assert_eq!(issuer.jwks_requests(), jwks_before, "the key cache survived every reload");
}

fn config_text(issuer: &TestIssuer, roles: &str) -> String {
    format!("[[issuers]]\nissuer = \"{}\"\nroles = {roles}\n", issuer.issuer())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_the_running_config() {
    let key = TestKey::rsa("ins_hup");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let dir = crate::scratch::Scratch::new();
    let path = dir.write("config.toml", &config_text(&issuer, "[\"authenticated\"]"));
    let token = editor_token(&key, &issuer, SystemTime::now());
    let config = path.to_str().unwrap().to_owned();
    let mut serve = tokio::task::spawn_blocking(move || {
        let mut p = ServeProcess::start(&["--config", &config, "--watch-interval", "0"]);
        p.wait_for_line("readiness changed ready=true");
        p
    })
    .await
    .unwrap();
    let addr = serve.addr.clone();
    let verify = |token: String| {
        let addr = addr.clone();
        async move { run_bin(&["verify", "--json", "--addr", &addr, &token], None).await }
    };
    assert_eq!(verify(token.clone()).await.status.code(), Some(1), "editor is not allowed yet");
    let jwks_before = issuer.jwks_requests();

    // A bad file: refused, with the line and key in the log; the old config stays.
    dir.write("config.toml", &format!("{}rolez = []\n", config_text(&issuer, "[\"authenticated\", \"editor\"]")));
    serve.signal("HUP");
    let (mut serve, line) = tokio::task::spawn_blocking(move || {
        let line = serve.wait_for_line("configuration reload refused");
        (serve, line)
    })
    .await
    .unwrap();
    assert!(line.contains("config.toml:4: rolez"), "{line}");
    let out = verify(token.clone()).await;
    assert_eq!(out.status.code(), Some(1), "the running config stays: {}", stdout(&out));
    assert!(stdout(&out).contains("REASON_ROLE_NOT_ALLOWED"));

    // A good file: applied, and the key cache is kept.
    dir.write("config.toml", &config_text(&issuer, "[\"authenticated\", \"editor\"]"));
    serve.signal("HUP");
    let serve = tokio::task::spawn_blocking(move || {
        let line = serve.wait_for_line("configuration reloaded");
        assert!(line.contains("1 issuer(s) kept their keys (1 with a new policy)"), "{line}");
        serve
    })
    .await
    .unwrap();
    let out = verify(token.clone()).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(issuer.jwks_requests(), jwks_before, "no refetch");
    assert_eq!(tokio::task::spawn_blocking(move || serve.stop()).await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_without_a_signal() {
    let key = TestKey::rsa("ins_watch");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let dir = crate::scratch::Scratch::new();
    let path = dir.write("config.toml", &config_text(&issuer, "[\"authenticated\"]"));
    let token = editor_token(&key, &issuer, SystemTime::now());
    let config = path.to_str().unwrap().to_owned();
    let serve = tokio::task::spawn_blocking(move || {
        let mut p = ServeProcess::start(&["--config", &config, "--watch-interval", "100ms"]);
        p.wait_for_line("readiness changed ready=true");
        p
    })
    .await
    .unwrap();
    let addr = serve.addr.clone();
    assert_eq!(run_bin(&["verify", "--addr", &addr, &token], None).await.status.code(), Some(1));
    dir.write("config.toml", &config_text(&issuer, "[\"authenticated\", \"editor\"]"));
    let serve = tokio::task::spawn_blocking(move || {
        let mut serve = serve;
        serve.wait_for_line("configuration reloaded");
        serve
    })
    .await
    .unwrap();
    assert_eq!(run_bin(&["verify", "--addr", &addr, &token], None).await.status.code(), Some(0));
    assert_eq!(tokio::task::spawn_blocking(move || serve.stop()).await.unwrap(), Some(0));
}
