//! Table-driven tests of claim extraction and the policy checks: one row per
//! reason and per edge.

use super::*;
use crate::verify::claims::Organization;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

fn claims(v: serde_json::Value) -> Claims {
    Claims::parse(v.to_string().as_bytes()).expect("a JSON object")
}

fn base() -> serde_json::Value {
    json!({
        "iss": "https://clerk.example.com", "sub": "user_1", "sid": "sess_1",
        "exp": NOW + 60, "iat": NOW, "nbf": NOW - 10, "role": "authenticated",
        "azp": "https://app.example.com", "v": 2,
    })
}

fn with(changes: serde_json::Value) -> Claims {
    let mut v = base();
    for (k, val) in changes.as_object().unwrap() {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    claims(v)
}

/// The base claims with `changes` set as given (`null` stays `null`).
fn set(changes: serde_json::Value) -> Claims {
    let mut v = base();
    for (k, val) in changes.as_object().unwrap() {
        v[k] = val.clone();
    }
    claims(v)
}

fn outcome(c: &Claims, policy: &Policy, expect: &Expectations<'_>, now: i64) -> Reason {
    check(effective_kind(TokenKind::Session, c), c, policy, expect, now)
        .map(|()| Reason::Valid)
        .unwrap_or_else(|r| r.reason)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn one_row_per_reason_and_edge() {
    let default = Policy::default();
    let skew0 = Policy { clock_skew: Duration::ZERO, ..Policy::default() };
    let apps = Policy { authorized_parties: strings(&["https://app.example.com"]), ..Policy::default() };
    let require_azp = Policy { require_azp: true, ..Policy::default() };
    let api = Policy { audiences: strings(&["api", "other"]), ..Policy::default() };
    let pending_ok = Policy { accept_pending_sessions: true, ..Policy::default() };
    let service = Policy { roles: strings(&["authenticated", "service_role"]), ..Policy::default() };
    let none = Expectations::default();

    let rows: Vec<(&str, Claims, &Policy, i64, Reason)> = vec![
        ("valid", with(json!({})), &default, NOW, Reason::Valid),
        ("exp missing", with(json!({"exp": null})), &default, NOW, Reason::MissingClaim),
        ("exp a string", with(json!({"exp": "1800000060"})), &default, NOW, Reason::MissingClaim),
        ("exp fractional", with(json!({"exp": (NOW + 60) as f64 + 0.5})), &default, NOW, Reason::Valid),
        ("sub missing", with(json!({"sub": null})), &default, NOW, Reason::MissingClaim),
        ("sub empty", with(json!({"sub": ""})), &default, NOW, Reason::MissingClaim),
        ("sub a number", with(json!({"sub": 7})), &default, NOW, Reason::MissingClaim),
        ("nbf a string", with(json!({"nbf": "x"})), &default, NOW, Reason::MissingClaim),
        // exp + skew is the first second that is expired.
        ("exp + skew - 1", with(json!({"exp": NOW - 4})), &default, NOW, Reason::Valid),
        ("exp + skew", with(json!({"exp": NOW - 5})), &default, NOW, Reason::Expired),
        ("skew 0, exp = now", with(json!({"exp": NOW})), &skew0, NOW, Reason::Expired),
        ("skew 0, exp = now + 1", with(json!({"exp": NOW + 1})), &skew0, NOW, Reason::Valid),
        // nbf/iat may be up to skew seconds ahead.
        ("nbf = now + skew", with(json!({"nbf": NOW + 5})), &default, NOW, Reason::Valid),
        ("nbf = now + skew + 1", with(json!({"nbf": NOW + 6})), &default, NOW, Reason::NotYetValid),
        ("iat = now + skew + 1", with(json!({"iat": NOW + 6})), &default, NOW, Reason::NotYetValid),
        ("iat and nbf absent", with(json!({"iat": null, "nbf": null})), &default, NOW, Reason::Valid),
        // A NumericDate is a number: null is the wrong type, not an absent
        // claim (found by the differential test: jose refuses these).
        ("nbf null", set(json!({"nbf": null})), &default, NOW, Reason::MissingClaim),
        ("iat null", set(json!({"iat": null})), &default, NOW, Reason::MissingClaim),
        ("exp null", set(json!({"exp": null})), &default, NOW, Reason::MissingClaim),
        // Fractions round toward refusal (nbf and iat up, exp down).
        ("nbf = now + skew + 0.5", with(json!({"nbf": NOW as f64 + 5.5})), &default, NOW, Reason::NotYetValid),
        ("iat = now + skew + 0.5", with(json!({"iat": NOW as f64 + 5.5})), &default, NOW, Reason::NotYetValid),
        ("nbf = now + skew - 0.5", with(json!({"nbf": NOW as f64 + 4.5})), &default, NOW, Reason::Valid),
        ("exp + skew - 0.5", with(json!({"exp": NOW as f64 - 4.5})), &default, NOW, Reason::Expired),
        ("expired beats future nbf", with(json!({"exp": NOW - 100, "nbf": NOW + 100})), &default, NOW, Reason::Expired),
        ("sts pending", with(json!({"sts": "pending"})), &default, NOW, Reason::SessionPending),
        ("sts pending accepted", with(json!({"sts": "pending"})), &pending_ok, NOW, Reason::Valid),
        ("sts active", with(json!({"sts": "active"})), &default, NOW, Reason::Valid),
        ("azp allowed", with(json!({})), &apps, NOW, Reason::Valid),
        ("azp other", with(json!({"azp": "https://evil.example.com"})), &apps, NOW, Reason::AuthorizedPartyMismatch),
        ("azp absent, not required", with(json!({"azp": null})), &apps, NOW, Reason::Valid),
        ("azp absent, required", with(json!({"azp": null})), &require_azp, NOW, Reason::AuthorizedPartyMismatch),
        ("azp a number", with(json!({"azp": 1})), &apps, NOW, Reason::MissingClaim),
        ("aud not configured, present", with(json!({"aud": "anything"})), &default, NOW, Reason::Valid),
        ("aud string match", with(json!({"aud": "api"})), &api, NOW, Reason::Valid),
        ("aud array match", with(json!({"aud": ["x", "other"]})), &api, NOW, Reason::Valid),
        ("aud string mismatch", with(json!({"aud": "x"})), &api, NOW, Reason::AudienceMismatch),
        ("aud array mismatch", with(json!({"aud": ["x", "y"]})), &api, NOW, Reason::AudienceMismatch),
        ("aud absent but required", with(json!({})), &api, NOW, Reason::AudienceMismatch),
        ("aud a number", with(json!({"aud": 5})), &api, NOW, Reason::MissingClaim),
        ("role absent", with(json!({"role": null})), &default, NOW, Reason::MissingRole),
        ("role anon", with(json!({"role": "anon"})), &default, NOW, Reason::RoleNotAllowed),
        ("role service_role by default", with(json!({"role": "service_role"})), &default, NOW, Reason::RoleNotAllowed),
        ("role service_role when named", with(json!({"role": "service_role"})), &service, NOW, Reason::Valid),
        ("role not a string", with(json!({"role": ["authenticated"]})), &default, NOW, Reason::RoleNotAllowed),
        ("mch_ subject", with(json!({"sub": "mch_123"})), &default, NOW, Reason::TokenTypeNotAccepted),
    ];
    for (name, c, policy, now, want) in rows {
        assert_eq!(outcome(&c, policy, &none, now), want, "{name}");
    }
}

#[test]
fn token_kinds_need_the_operator() {
    let c = with(json!({}));
    let none = Expectations::default();
    let default = Policy::default();
    for kind in [TokenKind::JwtTemplate, TokenKind::Machine, TokenKind::OAuth, TokenKind::Unrecognized] {
        let err = check(kind, &c, &default, &none, NOW).unwrap_err();
        assert_eq!(err.reason, Reason::TokenTypeNotAccepted, "{kind:?}");
        let accepting = Policy { token_kinds: TokenKinds::SESSION_ONLY.with(kind), ..Policy::default() };
        let want = if kind == TokenKind::Unrecognized { Reason::TokenTypeNotAccepted } else { Reason::Valid };
        let got = check(kind, &c, &accepting, &none, NOW).map(|()| Reason::Valid).unwrap_or_else(|r| r.reason);
        assert_eq!(got, want, "{kind:?} accepted");
    }
}

#[test]
fn expectations_only_narrow() {
    let c = with(json!({"aud": ["api"]}));
    let default = Policy::default();
    let parties = strings(&["https://other.example.com"]);
    let this_party = strings(&["https://app.example.com"]);
    let auds = strings(&["billing"]);
    let roles_admin = strings(&["service_role"]);
    let roles_auth = strings(&["authenticated"]);

    let narrow = |e: Expectations<'_>| outcome(&c, &default, &e, NOW);
    assert_eq!(
        narrow(Expectations { authorized_parties: &parties, ..Default::default() }),
        Reason::AuthorizedPartyMismatch
    );
    assert_eq!(narrow(Expectations { authorized_parties: &this_party, ..Default::default() }), Reason::Valid);
    assert_eq!(narrow(Expectations { audiences: &auds, ..Default::default() }), Reason::AudienceMismatch);
    assert_eq!(narrow(Expectations { roles: &roles_auth, ..Default::default() }), Reason::Valid);

    // A call cannot admit a role the server rejects.
    let admin = with(json!({"role": "service_role"}));
    let widen = Expectations { roles: &roles_admin, ..Default::default() };
    assert_eq!(outcome(&admin, &default, &widen, NOW), Reason::RoleNotAllowed);
    // Nor an azp the server rejects.
    let strict = Policy { authorized_parties: strings(&["https://other.example.com"]), ..Policy::default() };
    let widen = Expectations { authorized_parties: &this_party, ..Default::default() };
    assert_eq!(outcome(&c, &strict, &widen, NOW), Reason::AuthorizedPartyMismatch);
    // An expectation on azp requires azp.
    let no_azp = with(json!({"azp": null}));
    assert_eq!(
        outcome(&no_azp, &default, &Expectations { authorized_parties: &this_party, ..Default::default() }, NOW),
        Reason::AuthorizedPartyMismatch
    );
}

#[test]
fn organization_claims_v1_and_v2() {
    let v2 = with(json!({"o": {"id": "org_2", "rol": "admin", "slg": "acme", "per": "read,write"}}));
    assert_eq!(
        v2.org,
        Organization { id: Some("org_2".into()), role: Some("admin".into()), slug: Some("acme".into()) }
    );
    let v1 = with(json!({"v": null, "org_id": "org_1", "org_role": "org:admin", "org_slug": "acme1"}));
    assert_eq!(
        v1.org,
        Organization { id: Some("org_1".into()), role: Some("org:admin".into()), slug: Some("acme1".into()) }
    );
    assert_eq!(with(json!({})).org, Organization::default());
}

#[test]
fn payloads_that_are_not_objects_or_repeat_claims() {
    assert!(Claims::parse(b"[]").is_none());
    assert!(Claims::parse(b"42").is_none());
    assert!(Claims::parse(b"{").is_none());
    assert!(Claims::parse(br#"{"sub":"a","sub":"b"}"#).is_none());
    assert!(Claims::parse(br#"{"custom":1,"custom":2}"#).is_some());
    assert!(Claims::parse(b"{\"sub\":\"\xff\"}").is_none());
}

#[test]
fn numeric_dates() {
    let c = with(json!({"exp": 1e30, "iat": -5, "nbf": 12.1}));
    assert_eq!(c.exp, Claim::Present(i64::MAX));
    assert_eq!(c.iat, Claim::Present(-5));
    assert_eq!(c.nbf, Claim::Present(13), "rounded up");
    assert_eq!(with(json!({"exp": 12.9})).exp, Claim::Present(12), "rounded down");
    assert_eq!(set(json!({"exp": null, "nbf": null, "iat": null})).nbf, Claim::WrongType);
    assert_eq!(with(json!({"exp": true})).exp, Claim::WrongType);
}
