//! The config file end to end: the real Clerk tokens verified with their
//! JWKS (or PEM) as static keys, per-issuer policy with two issuers, a
//! networkless configuration with no issuer reachable, and the binary's
//! refusal of a bad file.

use clerk_introspect::keys::jwk::to_pem;
use clerk_introspect::pb::{Reason, VerifyResponse};
use clerk_introspect::test_issuer::{TestIssuer, TestKey, session_claims};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::scratch::{BIN, Scratch, fixtures, load_config, run_bin, stderr};
use crate::support::Server;

const CLERK_FIXTURE_ISSUER: &str = "https://clerk.inspired.puma-74.lcl.dev";

/// An RSA JWK's public key as PEM (SubjectPublicKeyInfo), as Clerk's
/// dashboard shows it.
pub fn rsa_jwk_to_pem(jwk: &serde_json::Value) -> String {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine as _;
    let b64 =
        |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.as_str().unwrap()).unwrap();
    let (n, e) = (b64(&jwk["n"]), b64(&jwk["e"]));
    let der = aws_lc_rs::rsa::PublicKeyComponents { n: &n[..], e: &e[..] }.as_der().unwrap();
    to_pem("PUBLIC KEY", der.as_ref())
}

fn fixture_pem() -> String {
    rsa_jwk_to_pem(&fixtures()["jwks"]["keys"][0])
}

fn pem_of(key: &TestKey) -> String {
    rsa_jwk_to_pem(key.jwk())
}

fn reason(r: &VerifyResponse) -> Reason {
    Reason::try_from(r.reason).unwrap()
}

async fn check_clerk_fixtures(server: &Server) {
    server.wait_for(ServingStatus::Serving).await;
    let f = fixtures();
    let token = |name: &str| f["tokens"][name].as_str().unwrap().to_owned();
    let issued = server.verify(&token("issued_by_clerk")).await;
    assert_eq!(reason(&issued), Reason::Expired, "{}", issued.message);
    assert!(issued.message.contains("expired"), "{}", issued.message);
    for altered in ["azp_tampered", "payload_swapped"] {
        let answer = server.verify(&token(altered)).await;
        assert_eq!(reason(&answer), Reason::BadSignature, "{altered}: {}", answer.message);
    }
}

#[tokio::test]
async fn the_token_clerk_issued_verifies_with_its_jwks_as_a_static_key_file() {
    let dir = Scratch::new();
    dir.write("clerk.jwks.json", &fixtures()["jwks"].to_string());
    let path = dir.write(
        "config.toml",
        &format!("[[issuers]]\nissuer = \"{CLERK_FIXTURE_ISSUER}\"\njwks_file = \"clerk.jwks.json\"\n"),
    );
    check_clerk_fixtures(&Server::start_with(load_config(&path)).await).await;
}

#[tokio::test]
async fn the_token_clerk_issued_verifies_with_its_pem_public_key_even_mangled() {
    let pem = fixture_pem();
    // As an environment variable often makes of it: one line, literal \n.
    let mangled = pem.trim_end().replace('\n', "\\n");
    for (name, value) in [("clean", pem.clone()), ("mangled", mangled)] {
        let dir = Scratch::new();
        let path = dir.write(
            "config.toml",
            &format!(
                "[[issuers]]\nissuer = \"{CLERK_FIXTURE_ISSUER}\"\npublic_key_pem = '''{value}'''\npublic_key_kid = \"ins_2GIoQhbUpy0hX7B2cVkuTMinXoD\"\nalgorithms = [\"RS256\"]\n"
            ),
        );
        eprintln!("{name}");
        check_clerk_fixtures(&Server::start_with(load_config(&path)).await).await;
    }
}

#[tokio::test]
async fn a_networkless_config_verifies_with_no_issuer_reachable() {
    let key = TestKey::rsa("ins_offline");
    // A real issuer that is down: it must never be asked.
    let down = TestIssuer::start(vec![key.clone()]).await.unwrap();
    down.set_up(false);
    let dir = Scratch::new();
    dir.write("offline.pem", &pem_of(&key));
    dir.write("other.jwks.json", &json!({"keys": [key.jwk()]}).to_string());
    let path = dir.write(
        "config.toml",
        &format!(
            r#"
# An https issuer that does not exist: static keys need no network at all.
[[issuers]]
issuer = "https://clerk.unreachable.invalid"
public_key_file = "offline.pem"

# A loopback issuer that is down, with its keys given as a JWKS file.
[[issuers]]
issuer = "{}"
jwks_file = "other.jwks.json"
"#,
            down.issuer()
        ),
    );
    let server = Server::start_with(load_config(&path)).await;
    server.wait_for(ServingStatus::Serving).await;
    for iss in ["https://clerk.unreachable.invalid", down.issuer()] {
        // The PEM key has no kid: it verifies whatever kid the token names.
        let answer = server.verify(&key.mint(&session_claims(iss, server.now()))).await;
        assert!(answer.valid, "{iss}: {}", answer.message);
    }
    assert_eq!(down.discovery_requests() + down.jwks_requests(), 0, "no request is ever made");
    let forged = TestKey::rsa("ins_offline").mint(&session_claims("https://clerk.unreachable.invalid", server.now()));
    assert_eq!(server.reason(&forged).await, Reason::BadSignature);
}

#[tokio::test]
async fn two_issuers_each_pass_only_their_own_policy() {
    let (ka, kb) = (TestKey::rsa("ins_a"), TestKey::rsa("ins_b"));
    let a = TestIssuer::start(vec![ka.clone()]).await.unwrap();
    let b = TestIssuer::start(vec![kb.clone()]).await.unwrap();
    let dir = Scratch::new();
    let path = dir.write(
        "config.toml",
        &format!(
            r#"
[[issuers]]
issuer = "{}"
authorized_parties = ["https://a.example.com"]
require_azp = true

[[issuers]]
issuer = "{}"
authorized_parties = ["https://b.example.com"]
roles = ["editor"]
token_kinds = ["session", "machine"]
"#,
            a.issuer(),
            b.issuer()
        ),
    );
    let server = Server::start_with(load_config(&path)).await;
    server.wait_for(ServingStatus::Serving).await;
    let now = server.now();
    let claims = |issuer: &TestIssuer, changes: serde_json::Value| {
        let mut c = issuer.session_claims(now);
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let cases = [
        (ka.mint(&claims(&a, json!({"azp": "https://a.example.com"}))), Reason::Valid),
        (ka.mint(&claims(&a, json!({"azp": "https://b.example.com"}))), Reason::AuthorizedPartyMismatch),
        (ka.mint(&claims(&a, json!({"azp": null}))), Reason::AuthorizedPartyMismatch),
        (ka.mint(&claims(&a, json!({"azp": "https://a.example.com", "role": "editor"}))), Reason::RoleNotAllowed),
        (ka.mint(&claims(&a, json!({"azp": "https://a.example.com", "sub": "mch_1"}))), Reason::TokenTypeNotAccepted),
        (kb.mint(&claims(&b, json!({"azp": "https://b.example.com", "role": "editor"}))), Reason::Valid),
        (kb.mint(&claims(&b, json!({"azp": null, "role": "editor"}))), Reason::Valid),
        (
            kb.mint(&claims(&b, json!({"azp": "https://a.example.com", "role": "editor"}))),
            Reason::AuthorizedPartyMismatch,
        ),
        (kb.mint(&claims(&b, json!({"azp": "https://b.example.com"}))), Reason::RoleNotAllowed),
        (
            kb.mint(&claims(&b, json!({"role": "editor", "sub": "mch_1", "azp": "https://b.example.com"}))),
            Reason::Valid,
        ),
        // B's token signed with A's key: keys are per issuer.
        (ka.mint(&claims(&b, json!({"role": "editor"}))), Reason::UnknownKey),
    ];
    for (i, (token, want)) in cases.iter().enumerate() {
        let answer = server.verify(token).await;
        assert_eq!(reason(&answer), *want, "case {i}: {}", answer.message);
    }
}

#[test]
fn serve_refuses_a_bad_config_file_naming_the_line_and_the_key() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let dir = Scratch::new();
    let cases: &[(&str, &str)] = &[
        (
            "[[issuers]]\nissuer = \"https://clerk.example.com\"\nclock_skew = 3600\n",
            ":3: issuers[0].clock_skew: 3600 s",
        ),
        ("[[issuers]]\nissuer = \"https://clerk.example.com\"\nclok_skew = 5\n", ":3: clok_skew: unknown field"),
        (
            "[[issuers]]\nissuer = \"https://a.example.com\"\n[[issuers]]\nissuer = \"https://a.example.com\"\n",
            ":4: issuers[1].issuer: https://a.example.com is already configured at line 2",
        ),
        (
            "[[issuers]]\nissuer = \"https://clerk.example.com\"\nauthorized_parties = [\"https://app.example.com/\"]\n",
            ":3: issuers[0].authorized_parties: \"https://app.example.com/\" is not an origin",
        ),
    ];
    for (text, needle) in cases {
        let path = dir.write("config.toml", text);
        let out = std::process::Command::new(BIN)
            .args(["serve", "--listen", &port, "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "want {needle:?} in {err}");
    }
}

#[test]
fn check_config_validates_without_binding_or_fetching() {
    let dir = Scratch::new();
    dir.write("clerk.jwks.json", &fixtures()["jwks"].to_string());
    let path = dir.write(
        "config.toml",
        &format!(
            "listen = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{CLERK_FIXTURE_ISSUER}\"\njwks_file = \"clerk.jwks.json\"\n[[issuers]]\nissuer = \"https://clerk.unreachable.invalid\"\nrequire_azp = true\n"
        ),
    );
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap(), "--check-config", "--max-connection-age", "10m"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = crate::scratch::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.starts_with("configuration OK: listen 127.0.0.1:1, plaintext, 2 issuer(s)"), "{text}");
    assert!(
        text.contains(
            "connections: at most 4096, handshake within 10 s, calls within 30 s, max age 600 s (then 10 s for calls in progress)"
        ),
        "{text}"
    );
    assert!(text.contains("1 static key(s), no network"), "{text}");
    assert!(text.contains("https://clerk.unreachable.invalid: keys by discovery"), "{text}");
    assert!(text.contains("(azp required)"), "{text}");
    dir.write("config.toml", "[[issuers]]\nissuer = \"https://clerk.example.com\"\nroles = []\n");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("config.toml:3: issuers[0].roles"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_config_file_and_an_explicit_flag() {
    // The file says roles = ["editor"]; --role on the command line wins.
    let key = TestKey::rsa("ins_cli");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let dir = Scratch::new();
    let path =
        dir.write("config.toml", &format!("[[issuers]]\nissuer = \"{}\"\nroles = [\"editor\"]\n", issuer.issuer()));
    let token = key.mint(&issuer.session_claims(std::time::SystemTime::now()));
    let mut serve = tokio::task::spawn_blocking({
        let path = path.clone();
        move || crate::scratch::ServeProcess::start(&["--config", path.to_str().unwrap(), "--role", "authenticated"])
    })
    .await
    .unwrap();
    let serve = tokio::task::spawn_blocking(move || {
        serve.wait_for_line("readiness changed ready=true");
        serve
    })
    .await
    .unwrap();
    let out = run_bin(&["verify", "--addr", &serve.addr, &token], None).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", crate::scratch::stdout(&out), stderr(&out));
    assert_eq!(tokio::task::spawn_blocking(move || serve.stop()).await.unwrap(), Some(0));
}
