use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::*;
use crate::pb::Reason;
use crate::test_issuer::{TestKey, session_claims};

const FIXTURES: &str = include_str!("../../../tests/data/clerk-js-fixtures.json");
const CLERK: &str = "https://clerk.example.com";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn good_claims() -> Value {
    session_claims(CLERK, SystemTime::now())
}

/// `claims` with members replaced (`null` removes).
fn with(changes: Value) -> Value {
    let mut c = good_claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn key() -> TestKey {
    TestKey::rsa("ins_test")
}

/// An unsigned-looking token with any header (the signature is junk).
fn raw(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 32])
    )
}

fn report(token: &str) -> Report {
    inspect(token, now()).unwrap_or_else(|e| panic!("{e}"))
}

fn codes(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.code).collect()
}

#[track_caller]
fn flags(token: &str, code: &str, level: Level, needle: &str) -> Report {
    let r = report(token);
    let f = r.find(code).unwrap_or_else(|| panic!("no {code} in {:?}", codes(&r)));
    assert_eq!(f.level, level, "{code}: {}", f.message);
    assert!(f.message.contains(needle), "{code}: want {needle:?} in {}", f.message);
    r
}

#[test]
fn a_good_session_token_has_no_error() {
    let r = report(&key().mint(&good_claims()));
    assert!(!r.has_errors(), "{:?}", r.findings);
    assert_eq!(r.kind, TokenKind::Session);
    assert_eq!(r.signature_bytes, 256);
    // A Clerk user id is never a UUID, by design: not a finding (the
    // auth.uid() pitfall is in docs/supabase.md).
    assert!(r.findings.iter().all(|f| f.level == Level::Note), "{:?}", r.findings);
    assert!(r.find("expires").is_some());
    assert_eq!(r.find("lifetime").unwrap().level, Level::Note);
}

#[test]
fn the_token_clerk_issued_is_expired_has_no_role_and_v1_claims() {
    let fixtures: Value = serde_json::from_str(FIXTURES).unwrap();
    let token = fixtures["tokens"]["issued_by_clerk"].as_str().unwrap();
    let r = report(token);
    for (code, level) in
        [("expired", Level::Error), ("no-role", Level::Error), ("v1-claims", Level::Warning), ("lifetime", Level::Note)]
    {
        assert_eq!(r.find(code).map(|f| f.level), Some(level), "{code} in {:?}", codes(&r));
    }
    assert!(r.find("expired").unwrap().message.contains("2022-10-24T21:51:50Z"));
    assert!(r.find("no-azp").is_none() && r.find("no-kid").is_none());
}

#[test]
fn each_wrong_setup_is_flagged_with_what_to_do() {
    let k = key();
    let hs = |iss: &str| raw(&json!({"alg": "HS256", "typ": "JWT"}), &with(json!({"iss": iss})));
    flags(&hs(CLERK), "shared-secret", Level::Error, "deprecated Clerk JWT-template");
    let r =
        flags(&hs("https://abcd.supabase.co/auth/v1"), "shared-secret", Level::Error, "Supabase's legacy JWT secret");
    assert!(r.find("supabase-issuer").is_some());
    flags(
        &raw(&json!({"alg": "ES256", "kid": "k"}), &with(json!({"iss": "https://abcd.supabase.co/auth/v1"}))),
        "supabase-issuer",
        Level::Error,
        "minted by Supabase Auth",
    );
    flags(&k.mint(&with(json!({"role": null}))), "no-role", Level::Error, "enable Clerk's Supabase integration");
    flags(&k.mint(&with(json!({"role": "service_role"}))), "service-role", Level::Error, "bypasses Row Level Security");

    let template = json!({"alg": "RS256", "kid": "ins_test", "cat": token::category::JWT_TEMPLATE});
    flags(&k.mint_with_header(&template, &good_claims()), "jwt-template", Level::Error, "without a template");
    flags(&k.mint(&with(json!({"sub": "mch_123"}))), "machine-token", Level::Error, "token_kinds");
    let oauth = json!({"alg": "RS256", "kid": "ins_test", "typ": "at+jwt"});
    flags(&k.mint_with_header(&oauth, &good_claims()), "oauth-token", Level::Error, "oauth kind");

    let iat = now();
    flags(&k.mint(&with(json!({"iat": iat, "exp": iat + 3600}))), "lifetime", Level::Warning, "longer than");
    // The demo's token (a loopback test issuer, 10 minutes): a note, not a warning.
    let demo = with(json!({"iss": "http://127.0.0.1:41234", "iat": iat, "exp": iat + 600}));
    let r = flags(&k.mint(&demo), "lifetime", Level::Note, "loopback test issuer");
    assert!(!r.has_errors() && r.findings.iter().all(|f| f.level == Level::Note), "{:?}", r.findings);
    flags(&k.mint(&with(json!({"iat": iat - 120, "exp": iat - 60}))), "expired", Level::Error, "getToken()");
    flags(&k.mint(&with(json!({"nbf": iat + 600}))), "not-yet-valid", Level::Error, "clock");
    flags(&k.mint(&with(json!({"exp": null}))), "no-exp", Level::Error, "must expire");

    flags(&raw(&json!({"alg": "RS256"}), &good_claims()), "no-kid", Level::Error, "Supabase requires one");
    flags(&raw(&json!({"alg": "none", "kid": "k"}), &good_claims()), "alg-none", Level::Error, "unsigned");
    flags(&raw(&json!({"alg": "ES512", "kid": "k"}), &good_claims()), "alg-unknown", Level::Error, "not one");
    flags(&raw(&json!({"alg": "RS256", "kid": "k", "crit": ["x"]}), &good_claims()), "crit", Level::Error, "refused");
    flags(
        &raw(&json!({"alg": "RS256", "kid": "k", "jku": "https://x"}), &good_claims()),
        "header-key",
        Level::Warning,
        "jku",
    );
    flags(&k.mint(&with(json!({"azp": null}))), "no-azp", Level::Warning, "require_azp");
    flags(&k.mint(&with(json!({"sts": "pending"}))), "pending-session", Level::Warning, "accept_pending_sessions");
    flags(&k.mint(&with(json!({"v": null, "org_id": "org_1"}))), "v1-claims", Level::Warning, "o.id");
    flags(&k.mint(&with(json!({"sid": null}))), "no-sid", Level::Warning, "JWT-template");
    flags(&k.mint(&with(json!({"iss": "http://clerk.example.com"}))), "iss-not-https", Level::Error, "https");
    flags(&k.mint(&with(json!({"iss": null}))), "no-iss", Level::Error, "cannot be trusted");
    flags(&k.mint(&with(json!({"act": {"sub": "user_admin"}}))), "impersonation", Level::Note, "user_admin");
    let big = "x".repeat(4000);
    flags(&k.mint(&with(json!({"custom": big}))), "large-token", Level::Warning, "__session cookie");
}

#[test]
fn findings_are_one_line_and_errors_come_first() {
    let r = report(&raw(&json!({"alg": "HS256"}), &with(json!({"role": null, "azp": null, "sub": "x\ny"}))));
    for f in &r.findings {
        assert!(!f.message.contains('\n'), "{}: {}", f.code, f.message);
    }
    let levels: Vec<Level> = r.findings.iter().map(|f| f.level).collect();
    let mut sorted = levels.clone();
    sorted.sort();
    assert_eq!(levels, sorted);
}

#[test]
fn not_a_token_is_an_error_with_the_servers_sentence() {
    for input in ["", "a.b", "!!.!!.!!", &"x".repeat(20_000)] {
        let e = inspect(input, now()).unwrap_err();
        assert_eq!(e.reason, Reason::Malformed, "{input:.20}");
    }
    let e =
        inspect(&format!("{}.{}.", URL_SAFE_NO_PAD.encode("[1]"), URL_SAFE_NO_PAD.encode("{}")), now()).unwrap_err();
    assert!(e.message.contains("header"), "{}", e.message);
}

#[test]
fn the_output_is_labelled_unverified_and_never_shows_the_signature() {
    let token = key().mint(&good_claims());
    let signature = token.rsplit('.').next().unwrap();
    let r = report(&format!("Bearer {token}"));
    for out in [render_text(&r), render_json(&r)] {
        assert!(out.contains("UNVERIFIED") || out.contains("\"unverified\": true"), "{out}");
        assert!(!out.contains(signature), "the signature must never be printed");
        assert!(!out.contains(&token), "the token must never be printed");
    }
    let json: Value = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(json["payload"]["sub"], "user_2pDemoUser000000000000000");
    assert_eq!(json["findings"][0]["level"], "note");
}
