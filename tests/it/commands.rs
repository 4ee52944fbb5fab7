//! The `verify`, `inspect` and `check-issuer` commands: the real binary,
//! against a real server and a real test issuer, output and exit codes.

use std::time::SystemTime;

use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use serde_json::{Value, json};

use crate::scratch::{fixtures, run_bin, stderr, stdout};
use crate::support::Server;

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

fn json_out(o: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(o), stderr(o)))
}

// === verify ===

#[tokio::test]
async fn verify_prints_the_answer_and_exits_by_validity() {
    let key = TestKey::rsa("ins_verify");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let addr = server.addr.to_string();
    let good = key.mint(&issuer.session_claims(server.now()));

    let out = run_bin(&["verify", "--addr", &addr, &good], None).await;
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for want in
        ["valid", "yes", "REASON_VALID", "user_2pDemoUser000000000000000", "sess_2pDemoSession", "ins_verify", "RS256"]
    {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    assert!(!text.contains(&good), "the token is never printed");

    // From stdin, as JSON.
    let out =
        run_bin(&["verify", "--json", "--addr", &format!("http://{addr}"), "-"], Some(&format!("Bearer {good}\n")))
            .await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let answer = json_out(&out);
    assert_eq!(answer["reason"], "REASON_VALID");
    assert_eq!(answer["identity"]["role"], "authenticated");
    assert!(answer["identity"]["expires_at"].as_str().unwrap().ends_with('Z'));

    // Invalid: exit 1, with the reason and the sentence.
    let mut expired = issuer.session_claims(server.now());
    expired["exp"] = json!(1);
    let out = run_bin(&["verify", "--json", "--addr", &addr, &key.mint(&expired)], None).await;
    assert_eq!(code(&out), Some(1));
    let answer = json_out(&out);
    assert_eq!(answer["valid"], false);
    assert_eq!(answer["reason"], "REASON_EXPIRED");
    assert!(answer["identity"].is_null(), "nothing unverified is shown");

    // Per-call expectations narrow.
    let out = run_bin(&["verify", "--addr", &addr, "--role", "editor", &good], None).await;
    assert_eq!(code(&out), Some(1));
    assert!(stdout(&out).contains("REASON_ROLE_NOT_ALLOWED"));

    let out = run_bin(&["verify", "--addr", &addr, "not-a-token"], None).await;
    assert_eq!(code(&out), Some(1));
    assert!(stdout(&out).contains("REASON_MALFORMED"));
}

#[tokio::test]
async fn verify_exits_2_when_it_cannot_ask() {
    // Nobody listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = run_bin(&["verify", "--addr", &closed, "--timeout", "2s", "a.b.c"], None).await;
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));

    // A trusted issuer whose keys never loaded: UNAVAILABLE.
    let key = TestKey::rsa("ins_down");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let server = Server::start(vec![crate::support::issuer_config(&issuer)]).await;
    let token = key.mint(&issuer.session_claims(SystemTime::now()));
    let out = run_bin(&["verify", "--addr", &server.addr.to_string(), &token], None).await;
    assert_eq!(code(&out), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("UNAVAILABLE"), "{}", stderr(&out));

    let out = run_bin(&["verify", "--addr", &server.addr.to_string(), "-"], Some("")).await;
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("no token"), "{}", stderr(&out));
}

// === inspect ===

#[tokio::test]
async fn inspect_flags_wrong_setups_and_exits_by_severity() {
    let f = fixtures();
    let clerk = f["tokens"]["issued_by_clerk"].as_str().unwrap();
    let out = run_bin(&["inspect", clerk], None).await;
    assert_eq!(code(&out), Some(1), "expired and no role are errors");
    let text = stdout(&out);
    assert!(text.starts_with("UNVERIFIED"), "{text}");
    for want in [
        "ERROR no-role",
        "ERROR expired",
        "WARN  v1-claims",
        "https://clerk.inspired.puma-74.lcl.dev",
        "ins_2GIoQhbUpy0hX7B2cVkuTMinXoD",
        "signature  256 bytes (not shown)",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    let signature = clerk.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "the signature is never printed");

    // A good session token: exit 0, and no warning (a Clerk user id is
    // `user_…` by design, not a UUID: nothing to warn about).
    let key = TestKey::rsa("ins_ok");
    let good = key.mint(&clerk_introspect::test_issuer::session_claims("https://clerk.example.com", SystemTime::now()));
    let out = run_bin(&["inspect", "-"], Some(&good)).await;
    assert_eq!(code(&out), Some(0), "{}", stdout(&out));
    assert!(!stdout(&out).contains("WARN") && !stdout(&out).contains("ERROR"), "{}", stdout(&out));

    // The deprecated Supabase JWT-template set-up (HS256).
    let b64 = |v: Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    let hs256 = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(json!({"alg": "HS256", "typ": "JWT"})),
        b64(
            json!({"iss": "https://abcd.supabase.co/auth/v1", "sub": "3f0c4e38-8a6c-4b4e-9d8e-0b5a1c2d3e4f", "role": "authenticated", "exp": 4_000_000_000u64})
        )
    );
    let out = run_bin(&["inspect", "--json", &hs256], None).await;
    assert_eq!(code(&out), Some(1));
    let report = json_out(&out);
    assert_eq!(report["unverified"], true);
    let codes: Vec<&str> = report["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    for want in ["shared-secret", "supabase-issuer", "no-kid"] {
        assert!(codes.contains(&want), "{want} in {codes:?}");
    }

    // Not a token: exit 2.
    let out = run_bin(&["inspect", "hello"], None).await;
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("not a token"), "{}", stderr(&out));
}

// === check-issuer ===

#[tokio::test]
async fn check_issuer_reports_what_serve_would_load() {
    let key = TestKey::rsa("ins_check");
    let issuer = TestIssuer::start(vec![key.clone(), TestKey::es256("ins_ec")]).await.unwrap();
    issuer.set_cache_control(Some("public, max-age=600".into()));
    let out = run_bin(&["check-issuer", issuer.issuer()], None).await;
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for want in [
        "issuer matches exactly",
        &issuer.jwks_uri(),
        "public, max-age=600",
        "every 10m",
        "keys (2 usable)",
        "kid ins_check  RSA 2048 bit  alg RS256  use sig",
        "kid ins_ec  EC P-256  alg ES256  use sig",
        "none: serve would load these keys",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }

    // No Cache-Control, a skipped key: still fine, with warnings.
    issuer.set_cache_control(None);
    let mut jwks = json!({"keys": [key.jwk(), {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]});
    issuer.set_jwks_body(Some(jwks.to_string().into_bytes()));
    let out = run_bin(&["check-issuer", "--json", issuer.issuer()], None).await;
    assert_eq!(code(&out), Some(0), "{}", stdout(&out));
    let report = json_out(&out);
    assert_eq!(report["refresh_seconds"], 300);
    assert_eq!(report["skipped"][0], "\"hmac\": symmetric (oct) keys are never used");
    assert!(report["warnings"].to_string().contains("no Cache-Control max-age"));

    // Only unusable keys: a problem.
    jwks["keys"] = json!([{"kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB"}]);
    issuer.set_jwks_body(Some(jwks.to_string().into_bytes()));
    let out = run_bin(&["check-issuer", issuer.issuer()], None).await;
    assert_eq!(code(&out), Some(1));
    assert!(stdout(&out).contains("no usable signing key"), "{}", stdout(&out));
    issuer.set_jwks_body(None);

    // --jwks-uri skips discovery.
    let discovery = issuer.discovery_requests();
    let out = run_bin(&["check-issuer", "--jwks-uri", &issuer.jwks_uri(), issuer.issuer()], None).await;
    assert_eq!(code(&out), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("skipped (a fixed jwks_uri)"));
    assert_eq!(issuer.discovery_requests(), discovery);
}

#[tokio::test]
async fn check_issuer_names_every_problem() {
    let issuer = TestIssuer::start(vec![TestKey::rsa("k")]).await.unwrap();
    issuer.set_discovery_issuer(Some("https://someone-else.example.com".into()));
    let out = run_bin(&["check-issuer", issuer.issuer()], None).await;
    assert_eq!(code(&out), Some(1));
    assert!(stdout(&out).contains("issuer DOES NOT match"), "{}", stdout(&out));
    assert!(stdout(&out).contains("they must be equal"), "{}", stdout(&out));

    issuer.set_discovery_issuer(None);
    issuer.set_up(false);
    let out = run_bin(&["check-issuer", issuer.issuer()], None).await;
    assert_eq!(code(&out), Some(1));
    assert!(stdout(&out).contains("answered HTTP 503"), "{}", stdout(&out));

    let cases = [
        ("http://clerk.example.com", "loopback"),
        ("https://abcd.supabase.co", "Supabase project"),
        ("https://clerk.example.com/.well-known/jwks.json", "JWKS URL"),
        ("sk_live_abc", "secret key"),
    ];
    for (arg, want) in cases {
        let out = run_bin(&["check-issuer", arg], None).await;
        assert_eq!(code(&out), Some(1), "{arg}");
        assert!(stdout(&out).contains(want), "{arg}: {}", stdout(&out));
    }
}

#[tokio::test]
async fn check_issuer_checks_every_issuer_of_a_config_file() {
    let a = TestIssuer::start(vec![TestKey::rsa("ins_a")]).await.unwrap();
    let b = TestIssuer::start(vec![TestKey::rsa("ins_b")]).await.unwrap();
    let fixed = TestKey::rsa("ins_fixed");
    let dir = crate::scratch::Scratch::new();
    dir.write("fixed.json", &json!({"keys": [fixed.jwk()]}).to_string());
    let config = dir.write(
        "config.toml",
        &format!(
            "[[issuers]]\nissuer = \"{}\"\n\n[[issuers]]\nissuer = \"{}\"\njwks_uri = \"{}\"\n\n[[issuers]]\nissuer = \"https://clerk.fixed.example.com\"\njwks_file = \"fixed.json\"\n",
            a.issuer(),
            b.issuer(),
            b.jwks_uri()
        ),
    );
    let config = config.to_str().unwrap();

    // The second issuer's JWKS is down: exit 1, and each issuer has its report.
    b.set_up(false);
    let discovery = b.discovery_requests();
    let out = run_bin(&["check-issuer", "--config", config], None).await;
    assert_eq!(code(&out), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for want in [
        "== issuer 1 of 3 (ok) ==",
        "issuer matches exactly",
        "== issuer 2 of 3 (PROBLEMS) ==",
        "skipped (a fixed jwks_uri)",
        "answered HTTP 503",
        "== issuer 3 of 3 (ok) ==",
        "from the config file (nothing fetched)",
        "kid ins_fixed  RSA 2048 bit  alg RS256",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    assert_eq!(b.discovery_requests(), discovery, "jwks_uri skips discovery, as serve does");

    let out = run_bin(&["check-issuer", "--json", "--config", config], None).await;
    let report = json_out(&out);
    assert_eq!(report["ok"], false);
    let issuers = report["issuers"].as_array().unwrap();
    assert_eq!(issuers.len(), 3);
    assert_eq!(
        (issuers[0]["ok"].clone(), issuers[1]["ok"].clone(), issuers[2]["ok"].clone()),
        (json!(true), json!(false), json!(true))
    );
    assert_eq!(issuers[0]["issuer"], a.issuer());
    assert_eq!(issuers[2]["static_keys"], true);
    assert_eq!(issuers[2]["keys"][0]["kid"], "ins_fixed");

    // All loadable: exit 0.
    b.set_up(true);
    let out = run_bin(&["check-issuer", "--config", config], None).await;
    assert_eq!(code(&out), Some(0), "{}", stdout(&out));

    // A config serve would refuse is refused here, with serve's words.
    let bad = dir.write("bad.toml", "[[issuers]]\nissuer = \"http://clerk.example.com\"\n");
    let out = run_bin(&["check-issuer", "--config", bad.to_str().unwrap()], None).await;
    assert_eq!(code(&out), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("clerk-introspect: invalid configuration: "), "{err}");
    assert!(err.contains("bad.toml:2: issuers[0].issuer: http://clerk.example.com uses plain http"), "{err}");
    // Either one issuer or a file, not both.
    let out = run_bin(&["check-issuer", "--config", config, a.issuer()], None).await;
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
}

// === demo ===

#[tokio::test]
async fn demo_once_shows_each_answer_and_exits_zero() {
    let out = run_bin(&["demo", "--once", "--listen", "127.0.0.1:0"], None).await;
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for (kind, valid, reason) in [
        ("session token (good)", "yes", "REASON_VALID"),
        ("expired session token", "no", "REASON_EXPIRED"),
        ("HS256 (shared secret)", "no", "REASON_ALGORITHM_NOT_ALLOWED"),
        ("no role claim", "no", "REASON_MISSING_ROLE"),
        ("Supabase Auth token", "no", "REASON_UNTRUSTED_ISSUER"),
    ] {
        let row = text.lines().find(|l| l.starts_with(kind)).unwrap_or_else(|| panic!("no row {kind} in:\n{text}"));
        let cells: Vec<&str> = row[kind.len()..].split_whitespace().collect();
        assert_eq!(&cells[..2], &[valid, reason], "{row}");
    }
    assert!(!text.contains("keeps running"), "--once stops the server:\n{text}");
}
