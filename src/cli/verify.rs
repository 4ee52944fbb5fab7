//! `clerk-introspect verify [--addr A] TOKEN|-`: asks a running server's
//! `Verify` and prints the answer. Exit code 0 valid, 1 invalid, 2 could
//! not ask (unreachable, TLS refused, UNAVAILABLE, bad input).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{read_token, rfc3339, table};
use crate::config::parse_duration;
use crate::pb;
use crate::pb::token_introspection_client::TokenIntrospectionClient;

/// Flags of `verify`.
#[derive(Debug, Clone, Args)]
#[deny(missing_docs)]
pub struct VerifyArgs {
    /// The token, or - to read it from stdin (keeps it out of the process list and shell history). A leading "Bearer " is accepted.
    #[arg(value_name = "TOKEN|-")]
    pub token: String,

    /// The server: host:port, http://host:port, or https://host:port (https is implied by the --tls-* flags).
    #[arg(long, env = "INTROSPECT_ADDR", default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub addr: String,

    /// Print the answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// For this call only, the token's azp must be one of these (repeatable).
    #[arg(long = "authorized-party", value_name = "ORIGIN")]
    pub authorized_parties: Vec<String>,

    /// For this call only, the token's aud must contain one of these (repeatable).
    #[arg(long = "audience", value_name = "AUD")]
    pub audiences: Vec<String>,

    /// For this call only, the token's role must be one of these (repeatable).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,

    /// PEM CA certificate(s) to trust for a TLS server (default with https: the system's roots).
    #[arg(long, env = "INTROSPECT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for a server that requires mTLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Name the server certificate must be valid for (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Give up after this long (connecting, then answering).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Why the server could not be asked (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CouldNotAsk(pub String);

/// The URI to connect to: `addr` with a scheme (https when TLS flags are given).
pub fn endpoint_uri(args: &VerifyArgs) -> String {
    let addr = args.addr.trim();
    if addr.contains("://") {
        return addr.to_owned();
    }
    let tls = args.tls_ca.is_some() || args.tls_cert.is_some() || args.tls_server_name.is_some();
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

fn read_file(path: &PathBuf, what: &str) -> Result<Vec<u8>, CouldNotAsk> {
    std::fs::read(path).map_err(|e| CouldNotAsk(format!("cannot read the {what} {}: {e}", path.display())))
}

async fn channel(args: &VerifyArgs) -> Result<Channel, CouldNotAsk> {
    let uri = endpoint_uri(args);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|_| CouldNotAsk(format!("{uri:?} is not an address; use host:port or https://host:port")))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if uri.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &args.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_file(ca, "CA certificate")?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            tls =
                tls.identity(Identity::from_pem(read_file(cert, "client certificate")?, read_file(key, "client key")?));
        }
        if let Some(name) = &args.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint =
            endpoint.tls_config(tls).map_err(|e| CouldNotAsk(format!("TLS set-up: {}", crate::error_chain(&e))))?;
    }
    endpoint.connect().await.map_err(|e| CouldNotAsk(format!("cannot connect to {uri}: {}", crate::error_chain(&e))))
}

/// Asks the server. `Err` means no answer could be had.
pub async fn ask(args: &VerifyArgs, token: String) -> Result<pb::VerifyResponse, CouldNotAsk> {
    let channel = channel(args).await?;
    let request = pb::VerifyRequest {
        token,
        expect: Some(pb::Expectations {
            authorized_parties: args.authorized_parties.clone(),
            audiences: args.audiences.clone(),
            roles: args.roles.clone(),
        }),
    };
    let mut client = TokenIntrospectionClient::new(channel);
    let call = client.verify(request);
    match tokio::time::timeout(args.timeout, call).await {
        Err(_) => Err(CouldNotAsk(format!("no answer within {:?}", args.timeout))),
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable && !status.message().is_empty() => {
            Err(CouldNotAsk(format!("the server could not decide (UNAVAILABLE): {}", status.message())))
        }
        Ok(Err(status)) => Err(CouldNotAsk(format!("the call failed: {:?}: {}", status.code(), status_text(&status)))),
    }
}

fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    crate::with_sources(status.message().to_owned(), status.source())
}

fn reason_name(r: i32) -> String {
    pb::Reason::try_from(r).map_or_else(|_| format!("REASON_{r}"), |r| r.as_str_name().to_owned())
}

/// The answer as a table.
pub fn render_table(answer: &pb::VerifyResponse) -> String {
    let mut rows = vec![
        ("valid".to_owned(), if answer.valid { "yes" } else { "no" }.to_owned()),
        ("reason".to_owned(), reason_name(answer.reason)),
        ("message".to_owned(), answer.message.clone()),
    ];
    if let Some(id) = &answer.identity {
        for (k, v) in identity_fields(id) {
            if !v.is_empty() {
                rows.push((k.to_owned(), v));
            }
        }
    }
    table(&rows)
}

fn identity_fields(id: &pb::Identity) -> Vec<(&'static str, String)> {
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| rfc3339(t.seconds)).unwrap_or_default();
    vec![
        ("subject", id.subject.clone()),
        ("issuer", id.issuer.clone()),
        ("session_id", id.session_id.clone()),
        ("role", id.role.clone()),
        ("authorized_party", id.authorized_party.clone()),
        ("organization_id", id.organization_id.clone()),
        ("organization_role", id.organization_role.clone()),
        ("organization_slug", id.organization_slug.clone()),
        ("issued_at", ts(&id.issued_at)),
        ("expires_at", ts(&id.expires_at)),
        ("key_id", id.key_id.clone()),
        ("algorithm", id.algorithm.clone()),
    ]
}

/// The answer as JSON (the proto's field names; timestamps in RFC 3339).
pub fn render_json(answer: &pb::VerifyResponse) -> String {
    let identity = answer.identity.as_ref().map(|id| {
        serde_json::Value::Object(identity_fields(id).into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect())
    });
    let value = json!({
        "valid": answer.valid,
        "reason": reason_name(answer.reason),
        "message": answer.message,
        "identity": identity,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Runs the command: prints the answer, returns the exit code.
pub async fn run(args: &VerifyArgs) -> u8 {
    let token = match read_token(&args.token) {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            eprintln!("clerk-introspect verify: no token given (pass it, or - and the token on stdin)");
            return 2;
        }
        Err(e) => {
            eprintln!("clerk-introspect verify: {e}");
            return 2;
        }
    };
    match ask(args, token).await {
        Ok(answer) => {
            if args.json {
                println!("{}", render_json(&answer));
            } else {
                print!("{}", render_table(&answer));
            }
            if answer.valid { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("clerk-introspect verify: {e}");
            2
        }
    }
}
