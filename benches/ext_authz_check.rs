//! What Envoy's `Check` costs on top of verification: the service method
//! called directly (no network) on Envoy-shaped CheckRequests, next to a
//! bare `Verifier::verify` of the same RS256 token.
//!
//! - `verify`: `Verifier::verify` alone (the floor);
//! - `bearer_allowed`: token in `authorization`, five identity headers set;
//! - `cookie_allowed`: token in `__session` among other cookies;
//! - `route_narrowed`: bearer plus `context_extensions` (azp allow-list);
//! - `missing_token_denied`: no token: a 401 with its JSON body.
//!
//! Run: `cargo bench --bench ext_authz_check`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clerk_introspect::App;
use clerk_introspect::clock::{Clock, ManualClock};
use clerk_introspect::config::{Config, IssuerConfig};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use clerk_introspect::verify::Expectations;
use criterion::Criterion;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

fn request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let mut map: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/rest/v1/todos?select=*"),
        (":scheme", "https"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "8f2c1c6e-2b7e-4a8e-9d55-0f1e2d3c4b5a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    map.extend(headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/rest/v1/todos?select=*".into(),
                    host: "api.example.com".into(),
                    headers: map,
                    ..HttpRequest::default()
                }),
            }),
            context_extensions: extensions.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..AttributeContext::default()
        }),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let key = TestKey::rsa("ins_bench");
    let issuer = rt.block_on(TestIssuer::start(vec![key.clone()])).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let config = Config::new(vec![IssuerConfig::new(issuer.issuer())]);
    let deps = clerk_introspect::app::Deps { clock: clock.clone(), ..Default::default() };
    let app = rt.block_on(async { App::start(&config, deps) }).unwrap();
    rt.block_on(async {
        while !app.readiness.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let token = key.mint(&issuer.session_claims(clock.now()));
    let service = app.authz.clone();
    let bearer = format!("Bearer {token}");
    let cookie = format!("__client_uat=1731000000; theme=dark; __session={token}; _ga=GA1.2.3.4");

    let cases = [
        ("bearer_allowed", request(&[("authorization", &bearer)], &[]), 0),
        ("cookie_allowed", request(&[("cookie", &cookie)], &[]), 0),
        (
            "route_narrowed",
            request(
                &[("authorization", &bearer)],
                &[("authorized_parties", "https://admin.example.com,http://localhost:3000")],
            ),
            0,
        ),
        ("missing_token_denied", request(&[], &[]), 16),
    ];
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("ext_authz");
    group.bench_function("verify", |b| {
        b.iter(|| rt.block_on(app.verifier.verify(&token, &Expectations::default())).unwrap());
    });
    for (name, req, want) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let answer = rt.block_on(service.check(tonic::Request::new(req.clone()))).unwrap().into_inner();
                assert_eq!(answer.status.unwrap().code, want);
            });
        });
    }
    group.finish();
    c.final_summary();
}
