//! Every reason through a real gRPC client, for RS256 and ES256 tokens, and
//! the shape of Verify and GetClaims answers.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clerk_introspect::keys::jwk::Algorithm;
use clerk_introspect::pb::{Expectations, Reason};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{Server, issuer_config};

fn b64(s: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn set(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

async fn every_reason_for(alg: Algorithm) {
    let key = TestKey::generate("ins_test", alg);
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = issuer_config(&issuer);
    config.policy.authorized_parties = vec!["http://localhost:3000".into()];
    let server = Server::start(vec![config]).await;
    server.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving).await;

    let now = server.now();
    let good = issuer.session_claims(now);
    let iat = good["iat"].as_i64().unwrap();
    let stranger = TestKey::generate("ins_other", alg);
    let good_token = key.mint(&good);
    let (input, _) = good_token.rsplit_once('.').unwrap();
    let hs256 = format!("{}.{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(good.to_string()), b64([7u8; 32]));
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(good.to_string()));
    let wrong_family = if alg == Algorithm::RS256 { "ES256" } else { "RS256" };
    let mismatch = format!(
        "{}.{}.{}",
        b64(json!({"alg": wrong_family, "kid": "ins_test"}).to_string()),
        b64(good.to_string()),
        b64([1u8; 64])
    );
    let tampered = format!(
        "{}.{}.{}",
        input.split('.').next().unwrap(),
        b64(set(good.clone(), "sub", json!("user_evil")).to_string()),
        good_token.rsplit_once('.').unwrap().1
    );
    let template =
        key.mint_with_header(&json!({"alg": alg.as_str(), "kid": "ins_test", "cat": "cl_B7d4PD222AAA"}), &good);

    let rows: Vec<(&str, String, Reason)> = vec![
        ("valid", good_token.clone(), Reason::Valid),
        ("bearer prefix", format!("Bearer {good_token}"), Reason::Valid),
        ("empty", String::new(), Reason::Malformed),
        ("two parts", "abc.def".into(), Reason::Malformed),
        ("not base64", "a!b.c.d".into(), Reason::Malformed),
        ("huge", "a".repeat(16 * 1024 + 1), Reason::Malformed),
        ("header not an object", format!("{}.{}.sig", b64("[1]"), b64(good.to_string())), Reason::Malformed),
        (
            "crit header",
            key.mint_with_header(&json!({"alg": alg.as_str(), "kid": "ins_test", "crit": ["x"]}), &good),
            Reason::Malformed,
        ),
        ("HS256", hs256, Reason::AlgorithmNotAllowed),
        ("alg none", none, Reason::AlgorithmNotAllowed),
        ("alg does not fit the key", mismatch, Reason::AlgorithmNotAllowed),
        ("unknown kid", stranger.mint(&good), Reason::UnknownKey),
        ("tampered payload", tampered, Reason::BadSignature),
        ("expired", key.mint(&set(good.clone(), "exp", json!(iat - 6))), Reason::Expired),
        ("not yet valid", key.mint(&set(good.clone(), "nbf", json!(iat + 30))), Reason::NotYetValid),
        ("iat in the future", key.mint(&set(good.clone(), "iat", json!(iat + 30))), Reason::NotYetValid),
        (
            "other issuer",
            key.mint(&set(good.clone(), "iss", json!("https://clerk.other.example.com"))),
            Reason::UntrustedIssuer,
        ),
        (
            "supabase issuer",
            key.mint(&set(good.clone(), "iss", json!("https://abc.supabase.co/auth/v1"))),
            Reason::UntrustedIssuer,
        ),
        (
            "azp not allowed",
            key.mint(&set(good.clone(), "azp", json!("https://evil.example.com"))),
            Reason::AuthorizedPartyMismatch,
        ),
        ("no role", key.mint(&without(good.clone(), "role")), Reason::MissingRole),
        ("service_role", key.mint(&set(good.clone(), "role", json!("service_role"))), Reason::RoleNotAllowed),
        ("no sub", key.mint(&without(good.clone(), "sub")), Reason::MissingClaim),
        ("no exp", key.mint(&without(good.clone(), "exp")), Reason::MissingClaim),
        ("JWT template", template, Reason::TokenTypeNotAccepted),
        ("machine subject", key.mint(&set(good.clone(), "sub", json!("mch_2pMachine"))), Reason::TokenTypeNotAccepted),
        ("pending session", key.mint(&set(good.clone(), "sts", json!("pending"))), Reason::SessionPending),
    ];
    for (name, token, want) in rows {
        let answer = server.verify(&token).await;
        assert_eq!(Reason::try_from(answer.reason).unwrap(), want, "{alg} {name}: {}", answer.message);
        assert_eq!(answer.valid, want == Reason::Valid, "{alg} {name}");
        assert_eq!(answer.identity.is_some(), want == Reason::Valid, "{alg} {name}: identity only when valid");
        assert!(!answer.message.is_empty(), "{alg} {name}: a sentence");
        if token.len() > 20 {
            assert!(!answer.message.contains(&token[..20]), "{alg} {name}: the token never appears in the message");
        }
    }

    // Expectations narrow per call.
    let expect = |e: Expectations| Some(e);
    let answer = server
        .verify_with(&good_token, expect(Expectations { audiences: vec!["billing".into()], ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::AudienceMismatch);
    let answer = server
        .verify_with(&good_token, expect(Expectations { roles: vec!["admin".into()], ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::RoleNotAllowed);
    let answer = server
        .verify_with(
            &good_token,
            expect(Expectations { authorized_parties: vec!["https://x".into()], ..Default::default() }),
        )
        .await
        .unwrap();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::AuthorizedPartyMismatch);
    let service_role = key.mint(&set(good.clone(), "role", json!("service_role")));
    let answer = server
        .verify_with(&service_role, expect(Expectations { roles: vec!["service_role".into()], ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::RoleNotAllowed, "a call cannot widen the policy");

    // Time moves with the injected clock, not with sleeps.
    server.clock.advance(Duration::from_secs(65));
    assert_eq!(server.reason(&good_token).await, Reason::Expired);
}

#[tokio::test]
async fn every_reason_rs256() {
    every_reason_for(Algorithm::RS256).await;
}

#[tokio::test]
async fn every_reason_es256() {
    every_reason_for(Algorithm::ES256).await;
}

#[tokio::test]
async fn identity_fills_v1_and_v2_organization_claims() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let mut v2 = issuer.session_claims(server.now());
    v2["o"] = json!({"id": "org_2v2", "rol": "admin", "slg": "acme", "per": "read"});
    let id = server.verify(&key.mint(&v2)).await.identity.unwrap();
    assert_eq!(id.subject, "user_2pDemoUser000000000000000");
    assert_eq!(id.issuer, issuer.issuer());
    assert_eq!(id.session_id, "sess_2pDemoSession0000000000000");
    assert_eq!(id.role, "authenticated");
    assert_eq!(id.authorized_party, "http://localhost:3000");
    assert_eq!(
        (id.organization_id.as_str(), id.organization_role.as_str(), id.organization_slug.as_str()),
        ("org_2v2", "admin", "acme")
    );
    assert_eq!(id.key_id, "ins_test");
    assert_eq!(id.algorithm, "RS256");
    assert_eq!(id.issued_at.unwrap().seconds, v2["iat"].as_i64().unwrap());
    assert_eq!(id.expires_at.unwrap().seconds, v2["exp"].as_i64().unwrap());

    let mut v1 = issuer.session_claims(server.now());
    v1.as_object_mut().unwrap().remove("v");
    v1["org_id"] = json!("org_1v1");
    v1["org_role"] = json!("org:admin");
    v1["org_slug"] = json!("acme1");
    let id = server.verify(&key.mint(&v1)).await.identity.unwrap();
    assert_eq!(
        (id.organization_id.as_str(), id.organization_role.as_str(), id.organization_slug.as_str()),
        ("org_1v1", "org:admin", "acme1")
    );
}

#[tokio::test]
async fn get_claims_answers_with_the_payload_or_a_typed_error() {
    let key = TestKey::es256("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let mut claims = issuer.session_claims(server.now());
    claims["custom"] = json!({"plan": "pro", "seats": 3, "tags": ["a", null, true]});
    let token = key.mint(&claims);
    let answer = server.get_claims(&token).await.unwrap();
    assert_eq!(answer.claims_json, claims.to_string(), "claims_json is the payload as signed");
    let fields = answer.claims.unwrap().fields;
    assert_eq!(fields.len(), claims.as_object().unwrap().len());
    assert!(
        matches!(fields["sub"].kind, Some(prost_types::value::Kind::StringValue(ref s)) if s == "user_2pDemoUser000000000000000")
    );
    assert!(
        matches!(fields["exp"].kind, Some(prost_types::value::Kind::NumberValue(n)) if n as i64 == claims["exp"].as_i64().unwrap())
    );
    assert!(matches!(fields["custom"].kind, Some(prost_types::value::Kind::StructValue(_))));
    assert_eq!(answer.identity.unwrap().algorithm, "ES256");

    let expired = key.mint(&set(claims.clone(), "exp", json!(claims["iat"].as_i64().unwrap() - 10)));
    let status = server.get_claims(&expired).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().starts_with("REASON_EXPIRED: "), "{}", status.message());
    let info = status.get_details_error_info().expect("ErrorInfo in the details");
    assert_eq!(info.reason, "REASON_EXPIRED");
    assert_eq!(info.domain, "introspect.v1");

    let status = server.get_claims("nope").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.get_details_error_info().unwrap().reason, "REASON_MALFORMED");
}

#[tokio::test]
async fn requests_are_bounded() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    // A request over 64 KiB is refused by the transport, before any parsing.
    let status = server.verify_with(&"a".repeat(70 * 1024), None).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // Just under the request limit but over the token limit: a normal answer.
    assert_eq!(server.reason(&"a.b.c".repeat(6000)).await, Reason::Malformed);
}

/// Issue 17, finding 4: tokens correctly signed by the issuer's key whose
/// header or payload breaks the JOSE and JSON rules are MALFORMED, on Verify
/// and GetClaims, with a sentence naming the problem. Each of these was
/// VALID before.
#[tokio::test]
async fn signed_tokens_that_are_not_strict_jose_are_malformed() {
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let key = TestKey::generate("ins_test", alg);
        let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
        let server = Server::ready(&issuer).await;
        let claims = issuer.session_claims(server.now()).to_string();
        let members = &claims[1..claims.len() - 1];
        let header = |extra: &str| format!(r#"{{"alg":"{alg}","kid":"ins_test","typ":"JWT"{extra}}}"#).into_bytes();
        let payload = |extra: &str| format!("{{{members}{extra}}}").into_bytes();
        let with_byte = |mut text: Vec<u8>, byte: u8| {
            let at = text.len() - 2;
            text.splice(at..at, [byte]);
            text
        };
        assert_eq!(server.reason(&key.mint_raw(&header(""), &payload(""))).await, Reason::Valid, "{alg}: the baseline");

        let rows: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
            ("a stray 0xff in an unknown header member", with_byte(header(r#","x":"ab""#), 0xff), payload(""), "UTF-8"),
            ("a stray 0xff in an unknown claim", header(""), with_byte(payload(r#","x":"ab""#), 0xff), "UTF-8"),
            ("kid null", format!(r#"{{"alg":"{alg}","kid":null}}"#).into_bytes(), payload(""), "\"kid\""),
            (
                "typ null",
                format!(r#"{{"alg":"{alg}","kid":"ins_test","typ":null}}"#).into_bytes(),
                payload(""),
                "\"typ\"",
            ),
            ("typ twice", header(r#","typ":"JWT""#), payload(""), "twice"),
            ("JWE enc", header(r#","enc":"A256GCM""#), payload(""), "JWE"),
            ("JWE zip", header(r#","zip":"DEF""#), payload(""), "\"zip\""),
            ("b64 false", header(r#","b64":false"#), payload(""), "RFC 7797"),
            ("crit null", header(r#","crit":null"#), payload(""), "crit"),
            ("kid twice, the second by escape", header(r#","ki\u0064":"ins_other""#), payload(""), "twice"),
            ("a claim twice", header(""), payload(r#","custom":1,"custom":2"#), "twice"),
            ("a nested member twice", header(""), payload(r#","m":{"a":1,"a":2}"#), "twice"),
            ("a lone surrogate", header(""), payload(r#","x":"\ud800""#), "surrogate"),
            ("a number beyond a double", header(""), payload(r#","x":1e400"#), "range"),
        ];
        for (name, h, p, says) in rows {
            let token = key.mint_raw(&h, &p);
            let answer = server.verify(&token).await;
            assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::Malformed, "{alg} {name}: {}", answer.message);
            assert!(answer.message.contains(says), "{alg} {name}: {}", answer.message);
            for part in token.split('.') {
                assert!(!answer.message.contains(part), "{alg} {name}: the message quotes the token");
            }
            let status = server.get_claims(&token).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{alg} {name}");
            assert_eq!(status.get_details_error_info().unwrap().reason, "REASON_MALFORMED", "{alg} {name}");
        }
    }
}

/// `levels` of nesting in a claim, counting the payload object as the first.
fn nested_claim(claims: &Value, levels: usize) -> String {
    let text = claims.to_string();
    let deep = format!("{}\"leaf\"{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
    format!("{},\"deep\":{deep}}}", &text[..text.len() - 1])
}

/// Depth of a Struct value: a Struct is one level, each list or struct inside one more.
fn struct_depth(s: &prost_types::Struct) -> usize {
    use prost_types::value::Kind;
    fn value(v: &prost_types::Value) -> usize {
        match &v.kind {
            Some(Kind::ListValue(l)) => 1 + l.values.iter().map(value).max().unwrap_or(0),
            Some(Kind::StructValue(s)) => struct_depth(s),
            _ => 0,
        }
    }
    1 + s.fields.values().map(value).max().unwrap_or(0)
}

/// Issue 17, finding 5: claims nested up to 32 levels come back whole in
/// `claims` and `claims_json`; deeper, the token is MALFORMED on every RPC
/// (before: VALID, with a Struct Python could not decode past ~50 levels and
/// an empty one past 127).
#[tokio::test]
async fn claims_nest_at_most_32_levels() {
    let key = TestKey::es256("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let claims = issuer.session_claims(server.now());
    let header = br#"{"alg":"ES256","kid":"ins_test","typ":"JWT"}"#;
    for levels in [31, 32] {
        let payload = nested_claim(&claims, levels);
        let token = key.mint_raw(header, payload.as_bytes());
        assert_eq!(server.reason(&token).await, Reason::Valid, "{levels} levels");
        let answer = server.get_claims(&token).await.unwrap();
        assert_eq!(answer.claims_json, payload, "{levels} levels");
        let claims = answer.claims.unwrap();
        assert_eq!(struct_depth(&claims), levels, "{levels} levels, none lost");
        assert_eq!(claims.fields.len(), 13, "{levels} levels: every claim");
    }
    for levels in [33, 200] {
        let token = key.mint_raw(header, nested_claim(&claims, levels).as_bytes());
        let answer = server.verify(&token).await;
        assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::Malformed, "{levels} levels");
        assert!(answer.message.contains("deeper than 32 levels"), "{}", answer.message);
        let status = server.get_claims(&token).await.unwrap_err();
        assert_eq!(status.get_details_error_info().unwrap().reason, "REASON_MALFORMED", "{levels} levels");
    }
}

/// Found by the differential test: an `alg` of five bytes with a non-ASCII
/// character across its second byte ("aéxy") made the verifier slice a
/// string inside a character and panic; the call was reset (CANCELLED)
/// instead of answered.
#[tokio::test]
async fn any_alg_text_gets_an_answer() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let claims = issuer.session_claims(server.now());
    for alg in ["aéxy", "x\u{feff}y", "Hé12", "HS25\u{e9}", "\u{1F600}", "é"] {
        let token = key.mint_with_header(&json!({"alg": alg, "kid": "ins_test"}), &claims);
        let answer = server.verify(&token).await;
        assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::AlgorithmNotAllowed, "{alg}: {}", answer.message);
    }
    // The connection is still there for the next call.
    assert_eq!(server.reason(&key.mint(&claims)).await, Reason::Valid);
}
