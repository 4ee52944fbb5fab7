//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`) through a
//! real gRPC client (envoy-types' `AuthorizationClient`), with CheckRequests
//! shaped as Envoy sends them: lower-cased header keys, pseudo-headers,
//! peer addresses, per-route `context_extensions`.

use std::collections::HashMap;

use clerk_introspect::config::Config;
use clerk_introspect::config::authz::{AuthzConfig, AuthzSettings as AuthzArgs, UnavailableMode};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValueOption, HttpResponse,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::{Value, json};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Server, issuer_config};

const AUTHZ: &str = "envoy.service.auth.v3.Authorization";

fn peer(ip: &str, port: u32) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }),
        ..Peer::default()
    }
}

/// A CheckRequest as Envoy's HTTP filter builds it.
fn envoy_request(method: &str, path: &str, headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let host = "api.example.com";
    let mut map: HashMap<String, String> = [
        (":authority", host),
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "8f2c1c6e-2b7e-4a8e-9d55-0f1e2d3c4b5a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in headers {
        assert_eq!(*k, k.to_ascii_lowercase(), "Envoy sends lower-cased header keys");
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("203.0.113.7", 54_321)),
            destination: Some(peer("10.0.0.12", 8080)),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "8f2c1c6e-2b7e-4a8e-9d55-0f1e2d3c4b5a".into(),
                    method: method.into(),
                    headers: map,
                    path: path.into(),
                    host: host.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..HttpRequest::default()
                }),
            }),
            context_extensions: extensions.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..AttributeContext::default()
        }),
    }
}

fn get(headers: &[(&str, &str)]) -> CheckRequest {
    envoy_request("GET", "/rest/v1/todos?select=*", headers, &[])
}

async fn check(server: &Server, request: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    AuthorizationClient::new(server.channel.clone()).check(request).await.map(|r| r.into_inner())
}

/// The OkHttpResponse of an allowed answer.
fn allowed(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(Code::Ok as i32), "{response:#?}");
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not an ok_response: {other:#?}"),
    }
}

/// The DeniedHttpResponse of a refusal, with the gRPC code and HTTP status checked.
fn denied(response: &CheckResponse, code: Code, http: i32) -> &DeniedHttpResponse {
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(code as i32), "{response:#?}");
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.as_ref().map(|s| s.code), Some(http), "{d:#?}");
            d
        }
        other => panic!("not a denied_response: {other:#?}"),
    }
}

fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a HeaderValueOption> {
    headers.iter().find(|h| h.header.as_ref().is_some_and(|h| h.key == name))
}

fn value<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    header(headers, name).map(|h| h.header.as_ref().unwrap().value.as_str())
}

/// A header that replaces the client's value, never appends to it.
fn assert_set(ok: &OkHttpResponse, name: &str, want: &str) {
    let h = header(&ok.headers, name).unwrap_or_else(|| panic!("{name} not set: {ok:#?}"));
    assert_eq!(h.header.as_ref().unwrap().value, want, "{name}");
    assert_eq!(h.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32, "{name} must overwrite");
    #[allow(deprecated)]
    let append = h.append;
    assert_ne!(append.map(|a| a.value), Some(true), "{name} must not append");
    assert!(!ok.headers_to_remove.iter().any(|r| r == name), "{name} is set, not removed");
}

fn body(d: &DeniedHttpResponse) -> Value {
    assert_eq!(value(&d.headers, "content-type"), Some("application/json"));
    serde_json::from_str(&d.body).unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", d.body))
}

/// No part of `token` (header, payload, signature) appears anywhere.
fn assert_no_token(answer: &impl std::fmt::Debug, token: &str) {
    let text = format!("{answer:?}");
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!text.contains(part), "the answer leaks a part of the token: {text}");
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn setup() -> (TestKey, TestIssuer, Server) {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    (key, issuer, server)
}

async fn setup_with(authz: AuthzArgs) -> (TestKey, TestIssuer, Server) {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = Config::new(vec![issuer_config(&issuer)]);
    config.authz = AuthzConfig::from_settings(&authz).unwrap();
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    (key, issuer, server)
}

fn with_org(mut claims: Value) -> Value {
    claims["o"] = json!({"id": "org_2pDemoOrg0000000000000000", "rol": "admin", "slg": "acme"});
    claims
}

#[tokio::test]
async fn bearer_token_is_allowed_with_identity_headers_set() {
    let (key, issuer, server) = setup().await;
    let token = key.mint(&with_org(issuer.session_claims(server.now())));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = check(&server, get(&[("authorization", &format!("{scheme} {token}"))])).await.unwrap();
        let ok = allowed(&answer);
        assert_set(ok, "x-clerk-user-id", "user_2pDemoUser000000000000000");
        assert_set(ok, "x-clerk-session-id", "sess_2pDemoSession0000000000000");
        assert_set(ok, "x-clerk-org-id", "org_2pDemoOrg0000000000000000");
        assert_set(ok, "x-clerk-org-role", "admin");
        assert_set(ok, "x-clerk-role", "authenticated");
        assert_eq!(ok.headers.len(), 5, "{ok:#?}");
        assert!(ok.headers_to_remove.is_empty(), "{ok:#?}");
        // The Authorization header goes upstream untouched (Supabase checks it again).
        assert!(
            header(&ok.headers, "authorization").is_none() && !ok.headers_to_remove.contains(&"authorization".into())
        );
        let meta = &answer.dynamic_metadata.as_ref().unwrap().fields;
        assert_eq!(meta["user_id"].kind, Some(Kind::StringValue("user_2pDemoUser000000000000000".into())));
        assert_eq!(meta["issuer"].kind, Some(Kind::StringValue(issuer.issuer().into())));
    }
}

#[tokio::test]
async fn session_cookie_is_allowed_plain_and_suffixed() {
    let (key, issuer, server) = setup().await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let plain = format!("__client_uat=1731000000; __session={token}; theme=dark");
    let suffixed = format!("__client_uat_Ab12Cd34=1731000000; __session_Ab12Cd34={token}");
    for cookie in [plain, suffixed] {
        let answer = check(&server, get(&[("cookie", &cookie)])).await.unwrap();
        assert_set(allowed(&answer), "x-clerk-user-id", "user_2pDemoUser000000000000000");
    }
    // An Authorization header of another scheme is not a token: the cookie is used.
    let answer =
        check(&server, get(&[("authorization", "Basic dXNlcjpwYXNz"), ("cookie", &format!("__session={token}"))]))
            .await
            .unwrap();
    allowed(&answer);

    // Two Clerk apps on one domain: the unsuffixed cookie belongs to the
    // other app (another instance); the suffixed one verifies.
    let other = TestKey::rsa("ins_other").mint(&issuer.session_claims(server.now()));
    let cookie = format!("__session={other}; __session_Ab12Cd34={token}");
    allowed(&check(&server, get(&[("cookie", &cookie)])).await.unwrap());
    // ... and the other way round: the suffixed one (tried first) fails, the next is tried.
    let cookie = format!("__session_Zz99={other}; __session={token}");
    allowed(&check(&server, get(&[("cookie", &cookie)])).await.unwrap());
    // Neither verifies: the refusal of the first one tried (the suffixed).
    let cookie = format!("__session={token}x; __session_Ab12Cd34={other}");
    let answer = check(&server, get(&[("cookie", &cookie)])).await.unwrap();
    let d = denied(&answer, Code::Unauthenticated, 401);
    assert_eq!(body(d)["reason"], "REASON_UNKNOWN_KEY");
    assert_no_token(&answer, &token);
    assert_no_token(&answer, &other);
}

#[tokio::test]
async fn a_bearer_header_wins_over_the_cookie() {
    let (key, issuer, server) = setup().await;
    let good = key.mint(&issuer.session_claims(server.now()));
    let mut claims = issuer.session_claims(server.now());
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() - 120);
    let expired = key.mint(&claims);
    let request = get(&[("authorization", &bearer(&expired)), ("cookie", &format!("__session={good}"))]);
    let answer = check(&server, request).await.unwrap();
    assert_eq!(body(denied(&answer, Code::Unauthenticated, 401))["reason"], "REASON_EXPIRED");
}

#[tokio::test]
async fn missing_token_is_401() {
    let (_key, _issuer, server) = setup().await;
    for headers in [
        vec![],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
        vec![("authorization", "Bearer ")],
        vec![("cookie", "theme=dark; __client_uat=0")],
    ] {
        let answer = check(&server, get(&headers)).await.unwrap();
        let d = denied(&answer, Code::Unauthenticated, 401);
        let www = value(&d.headers, "www-authenticate").unwrap();
        assert!(www.starts_with("Bearer error=\"invalid_token\", error_description=\"No session token"), "{www}");
        let body = body(d);
        assert_eq!(body["reason"], "REASON_MALFORMED");
        assert!(body["message"].as_str().unwrap().contains("__session cookie"), "{body}");
        assert_eq!(value(&d.headers, "x-introspect-reason"), Some("REASON_MALFORMED"));
        assert!(answer.status.as_ref().unwrap().message.starts_with("REASON_MALFORMED: No session token"));
    }
    // A request without HTTP attributes (e.g. Envoy's network filter) has no token either.
    let answer = check(&server, CheckRequest::default()).await.unwrap();
    denied(&answer, Code::Unauthenticated, 401);
}

#[tokio::test]
async fn expired_token_is_401_with_the_reason() {
    let (key, issuer, server) = setup().await;
    let mut claims = issuer.session_claims(server.now());
    let iat = claims["iat"].as_i64().unwrap();
    claims["exp"] = json!(iat - 120);
    claims["nbf"] = json!(iat - 200);
    claims["iat"] = json!(iat - 180);
    let token = key.mint(&claims);
    let answer = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap();
    let d = denied(&answer, Code::Unauthenticated, 401);
    assert_eq!(value(&d.headers, "x-introspect-reason"), Some("REASON_EXPIRED"));
    let www = value(&d.headers, "www-authenticate").unwrap();
    assert!(www.starts_with("Bearer error=\"invalid_token\", error_description=\""), "{www}");
    let body = body(d);
    assert_eq!(body["reason"], "REASON_EXPIRED");
    let message = body["message"].as_str().unwrap();
    assert!(!message.is_empty());
    assert!(answer.status.as_ref().unwrap().message.starts_with("REASON_EXPIRED: "));
    // The description is the same sentence, made RFC 6750-safe.
    assert!(www.contains(&message.replace('"', "'")[..20]), "{www} vs {message}");
    assert_no_token(&answer, &token);
}

#[tokio::test]
async fn wrong_role_is_403_insufficient_scope() {
    let (key, issuer, server) = setup().await;
    let mut claims = issuer.session_claims(server.now());
    claims["role"] = json!("service_role");
    let token = key.mint(&claims);
    let answer = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap();
    let d = denied(&answer, Code::PermissionDenied, 403);
    assert!(value(&d.headers, "www-authenticate").unwrap().starts_with("Bearer error=\"insufficient_scope\""));
    assert_eq!(body(d)["reason"], "REASON_ROLE_NOT_ALLOWED");
    assert_eq!(value(&d.headers, "x-introspect-reason"), Some("REASON_ROLE_NOT_ALLOWED"));
    assert_no_token(&answer, &token);

    claims.as_object_mut().unwrap().remove("role");
    let answer = check(&server, get(&[("authorization", &bearer(&key.mint(&claims)))])).await.unwrap();
    assert_eq!(body(denied(&answer, Code::PermissionDenied, 403))["reason"], "REASON_MISSING_ROLE");
}

#[tokio::test]
async fn spoofed_identity_headers_are_overwritten_or_removed() {
    let (key, issuer, server) = setup().await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let spoofed = [
        ("authorization", bearer(&token)),
        ("x-clerk-user-id", "user_evil".to_owned()),
        ("x-clerk-org-id", "org_evil".to_owned()),
        ("x-clerk-org-role", "admin".to_owned()),
    ];
    let spoofed: Vec<(&str, &str)> = spoofed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = check(&server, get(&spoofed)).await.unwrap();
    let ok = allowed(&answer);
    assert_set(ok, "x-clerk-user-id", "user_2pDemoUser000000000000000");
    // The token has no organization: the client's values are removed.
    for name in ["x-clerk-org-id", "x-clerk-org-role"] {
        assert!(ok.headers_to_remove.iter().any(|h| h == name), "{name} removed: {ok:#?}");
        assert!(header(&ok.headers, name).is_none());
    }
    // Removed even when Envoy did not forward them (allowed_headers).
    let answer = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap();
    let ok = allowed(&answer);
    assert!(ok.headers_to_remove.iter().any(|h| h == "x-clerk-org-id"), "{ok:#?}");
}

#[tokio::test]
async fn context_extensions_narrow_per_route() {
    let (key, issuer, server) = setup().await;
    let token = key.mint(&issuer.session_claims(server.now())); // azp http://localhost:3000, role authenticated
    let auth = [("authorization", bearer(&token))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let route = |ext: &[(&str, &str)]| envoy_request("POST", "/admin/users", &auth, ext);

    let answer = check(&server, route(&[("authorized_parties", "https://admin.example.com")])).await.unwrap();
    assert_eq!(body(denied(&answer, Code::PermissionDenied, 403))["reason"], "REASON_AUTHORIZED_PARTY_MISMATCH");
    let answer =
        check(&server, route(&[("authorized_parties", "https://admin.example.com, http://localhost:3000")])).await;
    allowed(&answer.unwrap());

    let answer = check(&server, route(&[("audiences", "billing-api")])).await.unwrap();
    assert_eq!(body(denied(&answer, Code::PermissionDenied, 403))["reason"], "REASON_AUDIENCE_MISMATCH");

    let answer = check(&server, route(&[("roles", "admin")])).await.unwrap();
    assert_eq!(body(denied(&answer, Code::PermissionDenied, 403))["reason"], "REASON_ROLE_NOT_ALLOWED");
    allowed(&check(&server, route(&[("roles", " , authenticated,")])).await.unwrap());
    // Blank lists and unknown keys add nothing.
    allowed(&check(&server, route(&[("roles", " , "), ("tenant", "acme")])).await.unwrap());

    // They can only narrow: a route cannot allow a role the server refuses.
    let mut claims = issuer.session_claims(server.now());
    claims["role"] = json!("service_role");
    let service = key.mint(&claims);
    let request = envoy_request("GET", "/", &[("authorization", &bearer(&service))], &[("roles", "service_role")]);
    let answer = check(&server, request).await.unwrap();
    assert_eq!(body(denied(&answer, Code::PermissionDenied, 403))["reason"], "REASON_ROLE_NOT_ALLOWED");
}

#[tokio::test]
async fn issuer_down_is_unavailable() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let server = Server::start(vec![issuer_config(&issuer)]).await;
    server.wait_for(ServingStatus::NotServing).await;
    assert_eq!(server.health(AUTHZ).await.unwrap(), ServingStatus::NotServing);
    let token = key.mint(&issuer.session_claims(server.now()));

    // Default: status UNAVAILABLE with a 503 denied response (fail closed).
    let answer = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap();
    assert_eq!(answer.status.as_ref().unwrap().code, Code::Unavailable as i32);
    let Some(HttpResponse::DeniedResponse(d)) = &answer.http_response else { panic!("denied_response: {answer:#?}") };
    assert_eq!(d.status.as_ref().unwrap().code, 503);
    assert_eq!(value(&d.headers, "x-introspect-reason"), Some("UNAVAILABLE"));
    let body: Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(body["reason"], "UNAVAILABLE");
    assert!(body["message"].as_str().unwrap().contains(issuer.issuer()), "{body}");
    assert_no_token(&answer, &token);
    // A missing token is still a plain refusal: no keys are needed for that.
    denied(&check(&server, get(&[])).await.unwrap(), Code::Unauthenticated, 401);

    issuer.set_up(true);
    server.wait_for(ServingStatus::Serving).await;
    allowed(&check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap());
}

#[tokio::test]
async fn issuer_down_as_a_grpc_error() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let mut config = Config::new(vec![issuer_config(&issuer)]);
    config.authz =
        AuthzConfig::from_settings(&AuthzArgs { unavailable: UnavailableMode::GrpcError, ..AuthzArgs::default() })
            .unwrap();
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::NotServing).await;
    let token = key.mint(&issuer.session_claims(server.now()));
    // The RPC fails, so Envoy applies failure_mode_allow / status_on_error.
    let status = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(issuer.issuer()), "{}", status.message());
    assert_no_token(&status, &token);
}

#[tokio::test]
async fn issuer_down_as_an_error_response() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    issuer.set_up(false);
    let mut config = Config::new(vec![issuer_config(&issuer)]);
    config.authz =
        AuthzConfig::from_settings(&AuthzArgs { unavailable: UnavailableMode::ErrorResponse, ..AuthzArgs::default() })
            .unwrap();
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::NotServing).await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let answer = check(&server, get(&[("cookie", &format!("__session={token}"))])).await.unwrap();
    assert_eq!(answer.status.as_ref().unwrap().code, Code::Unavailable as i32);
    let Some(HttpResponse::ErrorResponse(e)) = &answer.http_response else { panic!("error_response: {answer:#?}") };
    assert_eq!(e.status.as_ref().unwrap().code, 503);
    assert_eq!(value(&e.headers, "x-introspect-reason"), Some("UNAVAILABLE"));
    let body: Value = serde_json::from_str(&e.body).unwrap();
    assert_eq!(body["reason"], "UNAVAILABLE");
    assert!(body["message"].as_str().unwrap().contains(issuer.issuer()));
    assert_no_token(&answer, &token);
}

#[tokio::test]
async fn cors_preflight_passes_without_a_token() {
    let (_key, _issuer, server) = setup().await;
    let preflight = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![("origin", "https://app.example.com"), ("access-control-request-method", "POST")];
        headers.extend_from_slice(extra);
        envoy_request("OPTIONS", "/rest/v1/todos", &headers, &[])
    };
    let answer = check(&server, preflight(&[("x-clerk-user-id", "user_evil")])).await.unwrap();
    let ok = allowed(&answer);
    assert!(ok.headers.is_empty(), "{ok:#?}");
    for name in ["x-clerk-user-id", "x-clerk-session-id", "x-clerk-org-id", "x-clerk-org-role", "x-clerk-role"] {
        assert!(ok.headers_to_remove.iter().any(|h| h == name), "{name}: {ok:#?}");
    }
    // Not a preflight: OPTIONS without the CORS headers needs a token.
    let answer = check(&server, envoy_request("OPTIONS", "/rest/v1/todos", &[], &[])).await.unwrap();
    denied(&answer, Code::Unauthenticated, 401);
}

#[tokio::test]
async fn cors_preflight_bypass_can_be_turned_off() {
    let (_key, _issuer, server) = setup_with(AuthzArgs { bypass_cors_preflight: false, ..AuthzArgs::default() }).await;
    let headers = [("origin", "https://app.example.com"), ("access-control-request-method", "POST")];
    let answer = check(&server, envoy_request("OPTIONS", "/rest/v1/todos", &headers, &[])).await.unwrap();
    denied(&answer, Code::Unauthenticated, 401);
}

#[tokio::test]
async fn configured_header_cookie_and_claim_headers() {
    let (key, issuer, server) = setup_with(AuthzArgs {
        token_header: "x-clerk-token".into(),
        session_cookie: "app_session".into(),
        identity_headers: vec!["user-id=x-user".into(), "org-slug".into()],
        claim_headers: vec!["email=x-user-email".into(), "seats=x-seats".into(), "meta=x-meta".into()],
        ..AuthzArgs::default()
    })
    .await;
    let mut claims = with_org(issuer.session_claims(server.now()));
    claims["email"] = json!("ada@example.com");
    claims["seats"] = json!(5);
    claims["meta"] = json!({"plan": "pro"});
    let token = key.mint(&claims);

    // A bare token in the custom header.
    let answer = check(&server, get(&[("x-clerk-token", &token), ("x-meta", "spoofed")])).await.unwrap();
    let ok = allowed(&answer);
    assert_set(ok, "x-user", "user_2pDemoUser000000000000000");
    assert_set(ok, "x-clerk-org-slug", "acme");
    assert_set(ok, "x-user-email", "ada@example.com");
    assert_set(ok, "x-seats", "5");
    assert_eq!(ok.headers_to_remove, vec!["x-meta".to_owned()], "objects are never sent");
    assert!(header(&ok.headers, "x-clerk-user-id").is_none(), "the default set was replaced");

    // The configured cookie, and Authorization is no longer read.
    allowed(&check(&server, get(&[("cookie", &format!("app_session={token}"))])).await.unwrap());
    let answer = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap();
    let d = denied(&answer, Code::Unauthenticated, 401);
    assert!(body(d)["message"].as_str().unwrap().contains("x-clerk-token"));
}

#[tokio::test]
async fn raw_header_map_from_encode_raw_headers() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let (key, issuer, server) = setup().await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let mut request = get(&[]);
    let http = request.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    let raw = |k: &str, v: &str| HeaderValue { key: k.into(), value: String::new(), raw_value: v.as_bytes().to_vec() };
    http.headers.clear();
    http.header_map = Some(HeaderMap {
        headers: vec![
            raw(":method", "GET"),
            raw("authorization", &bearer(&token)),
            raw("x-clerk-user-id", "user_evil"),
        ],
    });
    assert_set(allowed(&check(&server, request).await.unwrap()), "x-clerk-user-id", "user_2pDemoUser000000000000000");
}

#[tokio::test]
async fn no_token_text_in_any_refusal() {
    let (key, issuer, server) = setup().await;
    let now = server.now();
    let good = issuer.session_claims(now);
    let iat = good["iat"].as_i64().unwrap();
    let set = |name: &str, v: Value| {
        let mut c = good.clone();
        c[name] = v;
        c
    };
    let valid = key.mint(&good);
    let (input, signature) = valid.rsplit_once('.').unwrap();
    let tokens = vec![
        key.mint(&set("exp", json!(iat - 120))),
        key.mint(&set("nbf", json!(iat + 3600))),
        key.mint(&set("role", json!("service_role"))),
        key.mint(&set("azp", json!("https://evil.example.com\"\r\nx-injected: 1"))),
        key.mint(&set("iss", json!("https://abcd.supabase.co/auth/v1"))),
        key.mint(&set("sts", json!("pending"))),
        TestKey::rsa("ins_unknown").mint(&good),
        format!("{input}.{}", signature.chars().rev().collect::<String>()),
        format!("{input}x.{signature}"),
        "not-a-jwt-at-all-but-long-enough".to_owned(),
        "a".repeat(20_000),
    ];
    let mut ctx = vec![("authorized_parties", "http://localhost:3000")];
    ctx.push(("audiences", ""));
    for token in &tokens {
        for request in [
            envoy_request("GET", "/", &[("authorization", &bearer(token))], &ctx),
            envoy_request("GET", "/", &[("cookie", &format!("__session={token}"))], &ctx),
        ] {
            let answer = check(&server, request).await.unwrap();
            let code = answer.status.as_ref().unwrap().code;
            assert!(code == Code::Unauthenticated as i32 || code == Code::PermissionDenied as i32, "{answer:#?}");
            assert_no_token(&answer, token);
            let Some(HttpResponse::DeniedResponse(d)) = &answer.http_response else { panic!("{answer:#?}") };
            let www = value(&d.headers, "www-authenticate").unwrap();
            assert!(www.chars().all(|c| (' '..='~').contains(&c)), "printable ASCII only: {www:?}");
            assert!(!d.headers.iter().any(|h| h.header.as_ref().unwrap().key == "x-injected"));
        }
    }
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let (key, issuer, server) = setup().await;
    let token = key.mint(&issuer.session_claims(server.now()));
    // Large but within the cap (Envoy's default header limit is 60 KiB): answered.
    let big = "v".repeat(100 * 1024);
    allowed(&check(&server, get(&[("authorization", &bearer(&token)), ("x-big", &big)])).await.unwrap());
    // Over the 256 KiB cap: refused by the server before any work.
    let huge = "v".repeat(300 * 1024);
    let status = check(&server, get(&[("authorization", &bearer(&token)), ("x-big", &huge)])).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn health_names_the_authorization_service() {
    let (_key, _issuer, server) = setup().await;
    assert_eq!(server.health(AUTHZ).await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn reflection_describes_the_authorization_service() {
    use tonic::codegen::tokio_stream::{self, StreamExt};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (_key, _issuer, server) = setup().await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let ask = |m: MessageRequest| ServerReflectionRequest { host: String::new(), message_request: Some(m) };
    let requests =
        [ask(MessageRequest::ListServices(String::new())), ask(MessageRequest::FileContainingSymbol(AUTHZ.into()))];
    let mut answers = client.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    assert!(list.service.iter().any(|s| s.name == AUTHZ), "{list:?}");
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else { panic!("{answer:?}") };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Issue 17, findings 4 and 5: Check refuses what Verify and GetClaims
/// refuse, with the same reason: claims nested deeper than 32 levels, and a
/// header with a member name twice.
#[tokio::test]
async fn deep_claims_and_repeated_members_are_denied_like_verify() {
    let (key, issuer, server) = setup().await;
    let claims = issuer.session_claims(server.now()).to_string();
    let deep = format!("{},\"deep\":{}1{}}}", &claims[..claims.len() - 1], "[".repeat(32), "]".repeat(32));
    let repeated = br#"{"alg":"RS256","kid":"ins_test","kid":"ins_test"}"#;
    for token in [
        key.mint_raw(br#"{"alg":"RS256","kid":"ins_test"}"#, deep.as_bytes()),
        key.mint_raw(repeated, claims.as_bytes()),
    ] {
        assert_eq!(server.reason(&token).await, clerk_introspect::pb::Reason::Malformed);
        let answer = check(&server, get(&[("authorization", &bearer(&token))])).await.unwrap();
        let d = denied(&answer, Code::Unauthenticated, 401);
        assert_eq!(value(&d.headers, "x-introspect-reason"), Some("REASON_MALFORMED"));
        assert_no_token(&answer, &token);
    }
    // One level less is allowed.
    let fine = format!("{},\"deep\":{}1{}}}", &claims[..claims.len() - 1], "[".repeat(31), "]".repeat(31));
    let answer = check(
        &server,
        get(&[("authorization", &bearer(&key.mint_raw(br#"{"alg":"RS256","kid":"ins_test"}"#, fine.as_bytes())))]),
    )
    .await
    .unwrap();
    allowed(&answer);
}
