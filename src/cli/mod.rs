//! The command line: the only place clap is used (with `main`).
//!
//! - [`Cli`]: the subcommands and the global `--log-format`;
//! - [`serve`]: `serve`'s flags, built from the settings table;
//! - [`verify`]: ask a running server about a token and print its answer;
//! - [`inspect`]: decode a token locally (UNVERIFIED) and flag wrong set-ups;
//! - [`check_issuer`]: fetch an issuer's discovery document and JWKS as
//!   `serve` would, and report what is there and what is wrong;
//! - [`revoke`]: revoke a session, user, membership or organization on
//!   every replica, through the revocation store.
//!
//! Each operator command has a function that computes a report (tested
//! directly) and one that prints it as a table or as JSON; `main` only maps
//! the outcome to an exit code.

pub mod check_issuer;
pub mod inspect;
pub mod revoke;
pub mod serve;
pub mod verify;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// clerk-introspect: verifies Clerk session tokens centrally, over gRPC and
/// as an Envoy ext_authz server, before they reach Supabase.
#[derive(Debug, Parser)]
#[command(name = "clerk-introspect", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr: text (human-readable) or json (one object per line, for log pipelines). RUST_LOG sets the levels.
    #[arg(long, global = true, env = "INTROSPECT_LOG_FORMAT", default_value = "text", value_parser = parse_log_format, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gRPC server (TokenIntrospection, health, reflection, Envoy ext_authz).
    Serve(Box<serve::ServeArgs>),
    /// Run a self-contained demo: a local test issuer, the server, and a few tokens verified through gRPC. No network or Clerk account needed.
    Demo(DemoArgs),
    /// Ask a running server to verify a token, and print its answer (exit 0 valid, 1 invalid, 2 could not ask).
    Verify(verify::VerifyArgs),
    /// Decode a token locally, WITHOUT verifying it, and flag wrong set-ups (HS256, Supabase-minted, no role, ...).
    Inspect(inspect::InspectArgs),
    /// Fetch an issuer's discovery document and JWKS exactly as serve would, and report what is found and every problem.
    CheckIssuer(check_issuer::CheckIssuerArgs),
    /// Revoke a session, a user's tokens, a membership or an organization on every replica, through the revocation store (--revocation-store): exit 0 appended, 64 nothing to revoke or no store, 69 store unreachable.
    Revoke(revoke::RevokeArgs),
}

/// Flags of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// gRPC listen address of the demo server (loopback by default).
    #[arg(long, env = "INTROSPECT_LISTEN", default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Print the table and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

/// Largest input read from stdin for a token (the server accepts at most
/// 64 KiB per request, and a token is at most 16 KiB).
pub const MAX_STDIN_BYTES: u64 = 64 * 1024;

/// The token given as `arg`, or read from stdin when `arg` is `-` (which
/// keeps it out of the process list and the shell history).
pub fn read_token(arg: &str) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
    if buf.len() as u64 > MAX_STDIN_BYTES {
        return Err(format!("stdin holds more than {MAX_STDIN_BYTES} bytes; a Clerk session token is about 1 KiB"));
    }
    String::from_utf8(buf).map(|s| s.trim().to_owned()).map_err(|_| "stdin is not UTF-8 text".to_owned())
}

/// `2024-01-31T12:00:00Z` for Unix seconds (clamped to the representable range).
pub fn rfc3339(unix_seconds: i64) -> String {
    let t = if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(unix_seconds.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(unix_seconds.unsigned_abs()))
    };
    match t {
        Some(t) if t.duration_since(UNIX_EPOCH).is_ok_and(|d| d.as_secs() < 253_402_300_800) => {
            humantime::format_rfc3339_seconds(t).to_string()
        }
        _ => format!("{unix_seconds} (out of range)"),
    }
}

/// A rough, readable length of time: `42 s`, `5 min`, `3 h`, `12 days`, `2 years`.
pub fn approx(seconds: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    match seconds {
        s if s < 2 * MIN => format!("{s} s"),
        s if s < 2 * HOUR => format!("{} min", s / MIN),
        s if s < 2 * DAY => format!("{} h", s / HOUR),
        s if s < 730 * DAY => format!("{} days", s / DAY),
        s => format!("{} years", s / (365 * DAY)),
    }
}

/// The current Unix time in seconds.
pub fn now_unix() -> i64 {
    crate::clock::unix_seconds(SystemTime::now())
}

/// Rows of `label  value`, labels padded to the widest.
pub fn table(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_666_648_310), "2022-10-24T21:51:50Z");
        assert!(rfc3339(i64::MAX).contains("out of range"));
        assert_eq!(approx(59), "59 s");
        assert_eq!(approx(600), "10 min");
        assert_eq!(approx(3 * 86_400), "3 days");
        assert_eq!(approx(3 * 365 * 86_400), "3 years");
    }

    #[test]
    fn tables_align() {
        let t = table(&[("a".into(), "1".into()), ("long".into(), "2".into())]);
        assert_eq!(t, "a     1\nlong  2\n");
    }
}
