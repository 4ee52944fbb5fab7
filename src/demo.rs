//! `clerk-introspect demo`: with no Clerk account and no network, start a
//! loopback test issuer and the real server against it, verify a few
//! Clerk-shaped tokens through a real gRPC client, print the answers, and
//! keep serving until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::config::{Config, IssuerConfig};
use crate::pb::token_introspection_client::TokenIntrospectionClient;
use crate::pb::{Reason, VerifyRequest};
use crate::test_issuer::{TestIssuer, TestKey};

/// How long the demo waits for the server to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval between readiness polls.
const READY_POLL: Duration = Duration::from_millis(20);
/// The demo's authorized party (a local dev front end).
const DEMO_ORIGIN: &str = "http://localhost:3000";

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source} (is another process using it? pass --listen 127.0.0.1:0)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The demo server did not start.
    #[error("the demo server failed: {0}")]
    Server(String),
    /// A gRPC call failed.
    #[error("gRPC call failed: {0}")]
    Rpc(#[from] tonic::Status),
}

/// One row of the demo table.
#[derive(Debug, Clone)]
pub struct DemoRow {
    /// What kind of token was sent.
    pub kind: &'static str,
    /// The answer's `valid`.
    pub valid: bool,
    /// The answer's reason.
    pub reason: Reason,
    /// The answer's sentence.
    pub message: String,
}

/// Runs the demo (see the module docs) on `listen`; with `once`, prints
/// the table and returns instead of serving until Ctrl-C.
pub async fn run(listen: SocketAddr, once: bool) -> Result<(), DemoError> {
    let key = TestKey::rsa("ins_demo2pInstance000000000000");
    let issuer = TestIssuer::start(vec![key.clone()])
        .await
        .map_err(|e| DemoError::Server(format!("cannot start the test issuer: {e}")))?;
    let mut issuer_config = IssuerConfig::new(issuer.issuer());
    issuer_config.policy.authorized_parties = vec![DEMO_ORIGIN.to_owned()];
    let config = Config::new(vec![issuer_config]);

    let listener = TcpListener::bind(listen).await.map_err(|source| DemoError::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| DemoError::Bind { addr: listen, source })?;
    let stop = CancellationToken::new();
    let mut server = tokio::spawn(crate::server::run(listener, config, stop.clone().cancelled_owned()));

    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| DemoError::Server(e.to_string()))?
        .connect()
        .await
        .map_err(|e| DemoError::Server(format!("cannot connect to {addr}: {e}")))?;
    wait_ready(channel.clone()).await?;

    let rows = verify_samples(&mut TokenIntrospectionClient::new(channel), &issuer, &key).await?;
    println!();
    println!("clerk-introspect demo: test issuer {} (loopback, ephemeral RS256 key), server {addr}", issuer.issuer());
    println!();
    print!("{}", table(&rows));

    if !once {
        let mut claims = issuer.session_claims(SystemTime::now());
        let now = claims["iat"].as_u64().unwrap_or_default();
        claims["exp"] = json!(now + 600);
        let example = key.mint(&claims);
        println!();
        println!("The server keeps running at {addr} (gRPC, plaintext). A token for it, valid for 10 minutes:");
        println!();
        // On a line of its own, ready to paste into a shell: the examples'
        // commands read the token from $TOKEN.
        println!("  export TOKEN='{example}'");
        println!();
        print!("{}", try_it(addr, &Tools::find()));
        println!();
        println!("Press Ctrl-C to stop.");
        tokio::select! {
            () = crate::shutdown::signal() => {}
            r = &mut server => return finish(r),
        }
    }
    stop.cancel();
    finish(server.await)
}

/// Where the demo found the commands its "try it" lines use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tools {
    /// Whether `grpcurl` is on `PATH`.
    pub grpcurl_on_path: bool,
    /// The pinned grpcurl that `ci/tools/setup.sh` (run by the tests)
    /// installs under the target directory, when it is there.
    pub pinned_grpcurl: Option<PathBuf>,
    /// How to run this binary from the current directory.
    pub this_binary: String,
}

impl Tools {
    /// Looks at `PATH`, the target directory of this binary and the
    /// current directory.
    pub fn find() -> Tools {
        let grpcurl_on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join("grpcurl"))));
        let exe = std::env::current_exe().ok();
        // target/<profile>/clerk-introspect → target/tools/venv/bin/grpcurl
        let pinned_grpcurl = exe
            .as_deref()
            .and_then(|exe| exe.parent()?.parent())
            .map(|target| target.join(PINNED_GRPCURL))
            .filter(|grpcurl| is_executable(grpcurl));
        let cwd = std::env::current_dir().ok();
        let this_binary = match (&exe, &cwd) {
            (Some(exe), Some(cwd)) => exe.strip_prefix(cwd).unwrap_or(exe).display().to_string(),
            (Some(exe), None) => exe.display().to_string(),
            _ => "clerk-introspect".to_owned(),
        };
        Tools { grpcurl_on_path, pinned_grpcurl, this_binary }
    }
}

/// The pinned grpcurl, relative to the target directory (`ci/tools/setup.sh`).
const PINNED_GRPCURL: &str = "tools/venv/bin/grpcurl";

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The demo's "Then try it" lines: the grpcurl commands, where to get
/// grpcurl when it is not on `PATH`, and the same call through this
/// binary's `verify`, which needs nothing else.
pub fn try_it(addr: SocketAddr, tools: &Tools) -> String {
    let mut out = String::from("Then try it:\n\n");
    out.push_str(&format!(
        "  printf '{{\"token\": \"%s\"}}' \"$TOKEN\" | grpcurl -plaintext -d @ {addr} introspect.v1.TokenIntrospection/Verify\n"
    ));
    out.push_str(&format!("  grpcurl -plaintext {addr} list\n\n"));
    if !tools.grpcurl_on_path {
        match &tools.pinned_grpcurl {
            Some(grpcurl) => out.push_str(&format!(
                "grpcurl is not on your PATH; the tests installed a pinned one: export PATH=\"{}:$PATH\"\n\n",
                grpcurl.parent().unwrap_or(grpcurl).display()
            )),
            None => out.push_str(
                "grpcurl is not installed (Debian has no package): `bash ci/tools/setup.sh` pins one under target/tools/venv/bin (cargo test does it too), or `go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.8.6`.\n\n",
            ),
        }
    }
    out.push_str("Or without grpcurl, through this binary (the token on stdin):\n\n");
    out.push_str(&format!("  printf '%s' \"$TOKEN\" | {} verify --addr {addr} -\n", tools.this_binary));
    out
}

fn finish(r: Result<Result<(), crate::server::ServeError>, tokio::task::JoinError>) -> Result<(), DemoError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DemoError::Server(e.to_string())),
        Err(e) => Err(DemoError::Server(e.to_string())),
    }
}

async fn wait_ready(channel: Channel) -> Result<(), DemoError> {
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let status = health.check(HealthCheckRequest { service: String::new() }).await;
        if status.is_ok_and(|s| s.get_ref().status == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DemoError::Server("the server did not become ready (keys did not load)".into()));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn hs256(claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"a-shared-jwt-secret-that-should-not-exist");
    let tag = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

async fn verify_samples(
    client: &mut TokenIntrospectionClient<Channel>,
    issuer: &TestIssuer,
    key: &TestKey,
) -> Result<Vec<DemoRow>, DemoError> {
    let now = SystemTime::now();
    let good = issuer.session_claims(now);
    let mut expired = issuer.session_claims(now - Duration::from_secs(120));
    expired["sid"] = json!("sess_2pExpired");
    let mut no_role = good.clone();
    no_role.as_object_mut().map(|o| o.remove("role"));
    let mut supabase = good.clone();
    supabase["iss"] = json!("https://abcdefghijklmnop.supabase.co/auth/v1");
    let other_instance = TestKey::rsa("ins_2pSomeOtherInstance0000000");

    let samples: Vec<(&'static str, String)> = vec![
        ("session token (good)", key.mint(&good)),
        ("expired session token", key.mint(&expired)),
        ("HS256 (shared secret)", hs256(&good)),
        ("no role claim", key.mint(&no_role)),
        ("Supabase Auth token", key.mint(&supabase)),
        ("other Clerk instance", other_instance.mint(&good)),
    ];
    let mut rows = Vec::with_capacity(samples.len());
    for (kind, token) in samples {
        let answer = client.verify(VerifyRequest { token, expect: None }).await?.into_inner();
        rows.push(DemoRow {
            kind,
            valid: answer.valid,
            reason: Reason::try_from(answer.reason).unwrap_or(Reason::Unspecified),
            message: answer.message,
        });
    }
    Ok(rows)
}

/// The demo table, one line per row.
pub fn table(rows: &[DemoRow]) -> String {
    let kind_w = rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(10);
    let reason_w = rows.iter().map(|r| r.reason.as_str_name().len()).max().unwrap_or(6);
    let mut out = format!("{:<kind_w$}  {:<5}  {:<reason_w$}  {}\n", "TOKEN", "VALID", "REASON", "MESSAGE");
    out.push_str(&format!("{}  {}  {}  {}\n", "-".repeat(kind_w), "-".repeat(5), "-".repeat(reason_w), "-".repeat(7)));
    for r in rows {
        out.push_str(&format!(
            "{:<kind_w$}  {:<5}  {:<reason_w$}  {}\n",
            r.kind,
            if r.valid { "yes" } else { "no" },
            r.reason.as_str_name(),
            r.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "127.0.0.1:50051";

    fn tools(on_path: bool, pinned: Option<&str>) -> Tools {
        Tools {
            grpcurl_on_path: on_path,
            pinned_grpcurl: pinned.map(PathBuf::from),
            this_binary: "target/release/clerk-introspect".into(),
        }
    }

    #[test]
    fn try_it_says_where_grpcurl_is_and_offers_verify() {
        let addr = ADDR.parse().unwrap();
        let on_path = try_it(addr, &tools(true, None));
        assert!(on_path.contains("| grpcurl -plaintext -d @ 127.0.0.1:50051 introspect.v1.TokenIntrospection/Verify"));
        assert!(!on_path.contains("not on your PATH") && !on_path.contains("not installed"), "{on_path}");
        assert!(
            on_path
                .contains(r#"printf '%s' "$TOKEN" | target/release/clerk-introspect verify --addr 127.0.0.1:50051 -"#)
        );

        let pinned = try_it(addr, &tools(false, Some("/w/target/tools/venv/bin/grpcurl")));
        assert!(pinned.contains(r#"export PATH="/w/target/tools/venv/bin:$PATH""#), "{pinned}");

        let none = try_it(addr, &tools(false, None));
        assert!(none.contains("Debian has no package") && none.contains("ci/tools/setup.sh"), "{none}");
        assert!(none.contains("go install github.com/fullstorydev/grpcurl/cmd/grpcurl@"), "{none}");
    }
}
