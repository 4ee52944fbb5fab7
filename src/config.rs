//! The command line (clap, every flag with an environment variable) and the
//! validated configuration it produces, before any port is bound. The
//! `--config` file is read by [`mod@file`].

pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::keys::fetch::{check_key_url, is_loopback_host};
use crate::keys::jwk::{Algorithm, AlgorithmSet};
use crate::keys::{KeySource, RefreshSettings};
use crate::service::ext_authz::{AuthzArgs, AuthzConfig};
use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;
use crate::verify::cache::{DEFAULT_TOKEN_CACHE_SIZE, MAX_TOKEN_CACHE_SIZE};
use crate::verify::{Policy, TokenKind, TokenKinds};

/// Largest accepted clock skew.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Least time allowed between unknown-kid refetches.
pub const MIN_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(1);
/// Shortest refresh interval that may be configured.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Default gRPC listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 50051);
/// Default interval between checks of the config and TLS files for changes.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// clerk-introspect: verifies Clerk session tokens centrally, over gRPC and
/// as an Envoy ext_authz server, before they reach Supabase.
#[derive(Debug, Parser)]
#[command(name = "clerk-introspect", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr: text (human-readable) or json (one object per line, for log pipelines). RUST_LOG sets the levels.
    #[arg(long, global = true, env = "INTROSPECT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gRPC server (TokenIntrospection, health, reflection, Envoy ext_authz).
    Serve(Box<ServeArgs>),
    /// Run a self-contained demo: a local test issuer, the server, and a few tokens verified through gRPC. No network or Clerk account needed.
    Demo(DemoArgs),
    /// Ask a running server to verify a token, and print its answer (exit 0 valid, 1 invalid, 2 could not ask).
    Verify(crate::cli::verify::VerifyArgs),
    /// Decode a token locally, WITHOUT verifying it, and flag wrong set-ups (HS256, Supabase-minted, no role, ...).
    Inspect(crate::cli::inspect::InspectArgs),
    /// Fetch an issuer's discovery document and JWKS exactly as serve would, and report what is found and every problem.
    CheckIssuer(crate::cli::check_issuer::CheckIssuerArgs),
}

/// Flags of `serve`. Every flag also reads the environment variable shown;
/// a flag on the command line wins.
#[derive(Debug, Clone, Args)]
#[deny(missing_docs)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "INTROSPECT_LISTEN", default_value = "0.0.0.0:50051", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// A trusted issuer (repeatable), e.g. `https://clerk.example.com`. Keys come from `URL/.well-known/openid-configuration` → `jwks_uri`. https is required except on a loopback host.
    #[arg(long = "issuer", env = "CLERK_ISSUER", value_delimiter = ',', value_name = "URL")]
    pub issuers: Vec<String>,

    /// Allowed azp values (repeatable). Default: azp not checked.
    #[arg(long = "authorized-party", env = "CLERK_AUTHORIZED_PARTIES", value_delimiter = ',', value_name = "ORIGIN")]
    pub authorized_parties: Vec<String>,

    /// Audiences (repeatable): one of them must be in aud. Default: aud not checked.
    #[arg(long = "audience", env = "CLERK_AUDIENCES", value_delimiter = ',', value_name = "AUD")]
    pub audiences: Vec<String>,

    /// Allowed values of the role claim (repeatable).
    #[arg(
        long = "role",
        env = "INTROSPECT_ROLES",
        value_delimiter = ',',
        default_value = "authenticated",
        value_name = "ROLE"
    )]
    pub roles: Vec<String>,

    /// Leeway for exp, nbf and iat, in seconds.
    #[arg(long, env = "INTROSPECT_CLOCK_SKEW", default_value_t = 5, value_name = "SECONDS")]
    pub clock_skew: u64,

    /// Require an azp claim (Clerk omits it on tokens minted without an Origin header).
    #[arg(long, env = "INTROSPECT_REQUIRE_AZP")]
    pub require_azp: bool,

    /// Allowed signature algorithms (repeatable). Default: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA. HS* and none can never be allowed.
    #[arg(long = "algorithm", env = "INTROSPECT_ALGORITHMS", value_delimiter = ',', value_name = "ALG")]
    pub algorithms: Vec<Algorithm>,

    /// Also accept tokens of this kind besides session tokens (repeatable): jwt-template, machine, oauth.
    #[arg(
        long = "accept-token-kind",
        env = "INTROSPECT_ACCEPT_TOKEN_KINDS",
        value_delimiter = ',',
        value_name = "KIND"
    )]
    pub accept_token_kinds: Vec<TokenKind>,

    /// Accept pending sessions (sts "pending"), which Clerk treats as signed out.
    #[arg(long, env = "INTROSPECT_ACCEPT_PENDING_SESSIONS")]
    pub accept_pending_sessions: bool,

    /// Interval between key refreshes when the JWKS has no Cache-Control max-age (which is used instead, clamped to 1 min..1 h).
    #[arg(long, env = "INTROSPECT_REFRESH_INTERVAL", default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub refresh_interval: Duration,

    /// Least time between two refetches triggered by an unknown kid, per issuer.
    #[arg(long, env = "INTROSPECT_UNKNOWN_KID_COOLDOWN", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub unknown_kid_cooldown: Duration,

    /// How long the last good keys stay in use while refreshes fail; past it the issuer has no keys (UNAVAILABLE, NOT_SERVING).
    #[arg(long, env = "INTROSPECT_MAX_KEY_STALENESS", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub max_key_staleness: Duration,

    /// Longest wait for in-flight calls after SIGTERM before the process exits anyway.
    #[arg(long, env = "INTROSPECT_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,

    /// Age at which a client connection is asked to go away (HTTP/2 GOAWAY, gRPC's MAX_CONNECTION_AGE): its client reconnects, re-resolves and so spreads over new replicas. off: connections live as long as their clients keep them.
    #[arg(long, env = "INTROSPECT_MAX_CONNECTION_AGE", default_value = "off", value_parser = parse_optional_duration, value_name = "DURATION|off")]
    pub max_connection_age: OptionalDuration,

    /// After that GOAWAY, how long calls in progress have before the connection is closed.
    #[arg(long, env = "INTROSPECT_MAX_CONNECTION_AGE_GRACE", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_connection_age_grace: Duration,

    /// Longest a call may take, from its headers to its answer, when its client set no shorter deadline (grpc-timeout): a call whose request never arrives in full is answered CANCELLED then, and its stream freed.
    #[arg(long, env = "INTROSPECT_CALL_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub call_timeout: Duration,

    /// Most client connections open at once on the gRPC listener. With every slot taken, a new client makes room: an idle connection (no call in progress; one that never made a call first, then the one idle the longest) gets GOAWAY; only when none is idle do new clients wait in the listen backlog. Lowered at start if the open-files limit cannot hold it.
    #[arg(long, env = "INTROSPECT_MAX_CONNECTIONS", default_value_t = crate::listener::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    /// Close (HTTP/2 GOAWAY) a client connection that has had no call in progress for this long (gRPC's MAX_CONNECTION_IDLE); its client reconnects when it next calls. off: idle connections stay.
    #[arg(long, env = "INTROSPECT_MAX_CONNECTION_IDLE", default_value = "5m", value_parser = parse_optional_duration, value_name = "DURATION|off")]
    pub max_connection_idle: OptionalDuration,

    /// Most calls in progress at once on the gRPC listener, across all connections; a call past it is answered RESOURCE_EXHAUSTED at once (health checks have 64 more of their own). Keep it below --max-connections, so that a full connection table always has an idle connection to close for a new client.
    #[arg(long, env = "INTROSPECT_MAX_CALLS_IN_FLIGHT", default_value_t = crate::server::limits::DEFAULT_MAX_CALLS, value_name = "N")]
    pub max_calls_in_flight: usize,

    /// Most bytes of requests held at once across all calls (read, not yet answered): a call whose request does not fit is answered RESOURCE_EXHAUSTED. Bytes, or with a KiB, MiB or GiB suffix.
    #[arg(long, env = "INTROSPECT_MAX_REQUEST_BYTES", default_value = "16MiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_request_bytes: usize,

    /// Time a call's request has, from its headers, to arrive whole; a call still waiting for it then is answered DEADLINE_EXCEEDED and its stream freed.
    #[arg(long, env = "INTROSPECT_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// Most calls in progress at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "INTROSPECT_MAX_STREAMS_PER_CONNECTION", default_value_t = crate::server::connection::DEFAULT_MAX_CONCURRENT_STREAMS, value_name = "N")]
    pub max_streams_per_connection: u32,

    /// Time a new connection has, from its accept, to complete the TLS handshake (with TLS) and send the HTTP/2 connection preface; a connection that has not is closed.
    #[arg(long, env = "INTROSPECT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// Tokens remembered after a successful check, so that a token sent again skips its signature check (about 100 bytes each), the most used of them whole (within 128 bytes × this); policy and expiry are still checked on every call. 0 disables the cache.
    #[arg(long, env = "INTROSPECT_TOKEN_CACHE_SIZE", default_value_t = DEFAULT_TOKEN_CACHE_SIZE, value_name = "TOKENS")]
    pub token_cache_size: usize,
    /// A TOML config file: issuers with per-issuer policy and key sources, listener, TLS. Re-read on SIGHUP and when it changes. A flag given on the command line wins over the file; the file wins over environment variables.
    #[arg(long, env = "INTROSPECT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key). Reloaded when the file changes.
    #[arg(long, env = "INTROSPECT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "INTROSPECT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): require every caller to present a client certificate issued by one of them (mTLS).
    #[arg(long, env = "INTROSPECT_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Validate the configuration (flags, config file, key and TLS files), print a summary and exit: 0 if it is valid, 64 if not. Nothing is bound and no issuer is contacted.
    #[arg(long)]
    pub check_config: bool,

    /// How often the config file (and the files it names) and the TLS files are checked for changes; 0 turns checking off (SIGHUP still reloads).
    #[arg(long, env = "INTROSPECT_WATCH_INTERVAL", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub watch_interval: Duration,
    /// Envoy ext_authz settings (`--authz-*`).
    #[command(flatten)]
    pub authz: AuthzArgs,
    /// HTTP address for Prometheus /metrics and the /healthz and /readyz probes, or "off".
    #[arg(long, env = "INTROSPECT_METRICS_LISTEN", default_value = "0.0.0.0:9464", value_parser = parse_metrics_listen, value_name = "ADDR|off")]
    pub metrics_listen: MetricsListen,
}

/// `--token-cache-size`, bounded (it comes from flags and environment only,
/// also when a config file is used).
pub fn check_token_cache_size(tokens: usize) -> Result<usize, ConfigError> {
    if tokens > MAX_TOKEN_CACHE_SIZE {
        return Err(ConfigError::new(
            "--token-cache-size",
            format!(
                "{tokens} is more than the {MAX_TOKEN_CACHE_SIZE} allowed; {DEFAULT_TOKEN_CACHE_SIZE} (the default) covers 100k distinct tokens a minute, and 0 disables the cache"
            ),
        ));
    }
    Ok(tokens)
}

/// Housekeeping of client connections on the gRPC listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Age at which a connection gets GOAWAY; `None`: no limit.
    pub max_age: Option<Duration>,
    /// Time left to calls in progress after that GOAWAY.
    pub max_age_grace: Duration,
    /// Time from accept to a completed TLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Longest a call may take when its client set no shorter deadline.
    pub call_timeout: Duration,
    /// GOAWAY after this long without a call; `None`: no limit.
    pub max_idle: Option<Duration>,
    /// Most calls in progress at once across all connections.
    pub max_calls: usize,
    /// Most request bytes held at once across all calls.
    pub max_request_bytes: usize,
    /// Time a call's request has, from its headers, to arrive whole.
    pub request_timeout: Duration,
    /// Most concurrent streams per connection.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_age: None,
            max_age_grace: DEFAULT_MAX_CONNECTION_AGE_GRACE,
            handshake_timeout: crate::listener::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: crate::listener::DEFAULT_MAX_CONNECTIONS,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_idle: Some(DEFAULT_MAX_CONNECTION_IDLE),
            max_calls: crate::server::limits::DEFAULT_MAX_CALLS,
            max_request_bytes: crate::server::limits::DEFAULT_MAX_REQUEST_BYTES,
            request_timeout: crate::server::limits::DEFAULT_REQUEST_TIMEOUT,
            max_streams_per_connection: crate::server::connection::DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// Default of `--max-connection-idle`.
pub const DEFAULT_MAX_CONNECTION_IDLE: Duration = Duration::from_secs(5 * 60);
/// Largest `--max-calls-in-flight` and `--max-streams-per-connection`.
pub const MAX_MAX_CALLS: usize = 1_000_000;
/// Smallest `--max-request-bytes`: one request of the largest size accepted
/// (`MAX_REQUEST_BYTES` of the services) and its gRPC prefix must fit.
pub const MIN_MAX_REQUEST_BYTES: usize = 64 * 1024 + 5;
/// Largest `--max-request-bytes`.
pub const MAX_MAX_REQUEST_BYTES: usize = 1 << 30;

/// Default of `--call-timeout`: longer than the slowest call that can
/// succeed, one that waits for an unknown-kid refetch (discovery, then the
/// JWKS, each bounded by the fetch timeout).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const _: () = assert!(DEFAULT_CALL_TIMEOUT.as_secs() > 2 * crate::keys::fetch::REQUEST_TIMEOUT.as_secs());

/// Default of `--max-connection-age-grace`.
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);

impl ConnectionSettings {
    /// From `serve`'s flags, validated.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        if args.max_connection_age.0 == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "--max-connection-age",
                "0s would close every connection as it opens; give an age such as 10m, or off for no limit",
            ));
        }
        if args.handshake_timeout.is_zero() {
            return Err(ConfigError::new(
                "--handshake-timeout",
                "0s would close every connection before it could say anything; the default is 10s",
            ));
        }
        if !(1..=crate::listener::MAX_MAX_CONNECTIONS).contains(&args.max_connections) {
            return Err(ConfigError::new(
                "--max-connections",
                format!(
                    "{} is not between 1 and {}; the default is {}",
                    args.max_connections,
                    crate::listener::MAX_MAX_CONNECTIONS,
                    crate::listener::DEFAULT_MAX_CONNECTIONS
                ),
            ));
        }
        if args.call_timeout < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "--call-timeout",
                "under 1s would cancel calls that wait for a key refetch; the default is 30s",
            ));
        }
        if args.max_connection_idle.0 == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "--max-connection-idle",
                "0s would close every connection between two calls; give a time such as 5m, or off",
            ));
        }
        if !(1..=MAX_MAX_CALLS).contains(&args.max_calls_in_flight) {
            return Err(ConfigError::new(
                "--max-calls-in-flight",
                format!(
                    "{} is not between 1 and {MAX_MAX_CALLS}; the default is {}",
                    args.max_calls_in_flight,
                    crate::server::limits::DEFAULT_MAX_CALLS
                ),
            ));
        }
        if !(MIN_MAX_REQUEST_BYTES..=MAX_MAX_REQUEST_BYTES).contains(&args.max_request_bytes) {
            return Err(ConfigError::new(
                "--max-request-bytes",
                format!(
                    "{} is not between {MIN_MAX_REQUEST_BYTES} (one request of the largest size) and {MAX_MAX_REQUEST_BYTES}; the default is 16MiB",
                    args.max_request_bytes
                ),
            ));
        }
        if args.request_timeout < Duration::from_millis(100) || args.request_timeout > args.call_timeout {
            return Err(ConfigError::new(
                "--request-timeout",
                format!(
                    "{} is not between 100ms and --call-timeout ({}); the default is 5s",
                    humantime::format_duration(args.request_timeout),
                    humantime::format_duration(args.call_timeout)
                ),
            ));
        }
        if !(1..=MAX_MAX_CALLS as u64).contains(&u64::from(args.max_streams_per_connection)) {
            return Err(ConfigError::new(
                "--max-streams-per-connection",
                format!(
                    "{} is not between 1 and {MAX_MAX_CALLS}; the default is {}",
                    args.max_streams_per_connection,
                    crate::server::connection::DEFAULT_MAX_CONCURRENT_STREAMS
                ),
            ));
        }
        Ok(Self {
            max_age: args.max_connection_age.0,
            max_age_grace: args.max_connection_age_grace,
            handshake_timeout: args.handshake_timeout,
            max_connections: args.max_connections,
            call_timeout: args.call_timeout,
            max_idle: args.max_connection_idle.0,
            max_calls: args.max_calls_in_flight,
            max_request_bytes: args.max_request_bytes,
            request_timeout: args.request_timeout,
            max_streams_per_connection: args.max_streams_per_connection,
        })
    }

    /// The per-call limits these settings give.
    pub fn call_limits(&self) -> crate::server::limits::Settings {
        crate::server::limits::Settings {
            max_calls: self.max_calls,
            max_request_bytes: self.max_request_bytes,
            request_timeout: self.request_timeout,
            call_timeout: self.call_timeout,
        }
    }

    /// How connections are served with these settings.
    pub fn http2(&self) -> crate::server::connection::Http2Settings {
        crate::server::connection::Http2Settings {
            max_concurrent_streams: self.max_streams_per_connection,
            max_age: self.max_age,
            max_age_grace: self.max_age_grace,
            max_idle: self.max_idle,
        }
    }
}

/// A duration flag that can also be `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

fn parse_optional_duration(s: &str) -> Result<OptionalDuration, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalDuration(None));
    }
    parse_duration(s).map(|d| OptionalDuration(Some(d))).map_err(|e| format!("{e}, or off"))
}

/// A size in bytes: a number, optionally followed by `KiB`, `MiB` or `GiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => return Err(format!("unknown unit {other:?} (examples: 65536, 512KiB, 16MiB)")),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size (examples: 65536, 512KiB, 16MiB)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s} is too large"))
}

/// Where the HTTP metrics and probe endpoint listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// Not served.
    Off,
    /// This address.
    Addr(SocketAddr),
}

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen::Off);
    }
    s.parse().map(MetricsListen::Addr).map_err(|_| format!("{s:?} is neither an address (e.g. 0.0.0.0:9464) nor off"))
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

/// Parses a duration such as `500ms`, `10s`, `5m` or `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m, 24h)"))
}

/// A configuration problem: one line that names the flag and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    /// The flag (or config key) at fault, e.g. `--issuer`.
    pub flag: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `flag`.
    pub fn new(flag: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { flag: flag.into(), problem: problem.into() }
    }
}

/// One trusted issuer: where its keys come from, its policy, its timing.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The issuer identifier, compared exactly with `iss`.
    pub issuer: String,
    /// Where its keys come from.
    pub source: KeySource,
    /// What its tokens must satisfy.
    pub policy: Policy,
    /// Refresh timing.
    pub refresh: RefreshSettings,
}

impl IssuerConfig {
    /// An issuer with discovery, the default policy and default timing.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            source: KeySource::Discovery,
            policy: Policy::default(),
            refresh: RefreshSettings::default(),
        }
    }
}

/// Everything `serve` needs, validated.
#[derive(Clone)]
pub struct Config {
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Longest drain after shutdown starts.
    pub shutdown_grace: Duration,
    /// Client connection housekeeping (max age); flags and environment only.
    pub connections: ConnectionSettings,
    /// The clock (injected by tests).
    pub clock: Arc<dyn Clock>,
    /// Most verified tokens remembered (0: no token cache).
    pub token_cache_size: usize,
    /// gRPC listen address (bound by `main`; a reload cannot change it).
    pub listen: SocketAddr,
    /// TLS for the listener; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    /// Interval between checks of the config and TLS files for changes
    /// (zero: no checks; SIGHUP still reloads).
    pub watch_interval: Duration,
    /// The Envoy ext_authz server's settings.
    pub authz: AuthzConfig,
    /// Where metrics go besides the per-app Prometheus registry (an OTLP meter).
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("issuers", &self.issuers)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("connections", &self.connections)
            .field("token_cache_size", &self.token_cache_size)
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("watch_interval", &self.watch_interval)
            .field("authz", &self.authz)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration trusting `issuers`, with defaults elsewhere.
    pub fn new(issuers: Vec<IssuerConfig>) -> Self {
        Self {
            issuers,
            shutdown_grace: Duration::from_secs(20),
            connections: ConnectionSettings::default(),
            clock: Arc::new(SystemClock),
            token_cache_size: DEFAULT_TOKEN_CACHE_SIZE,
            listen: DEFAULT_LISTEN,
            tls: None,
            watch_interval: DEFAULT_WATCH_INTERVAL,
            authz: AuthzConfig::default(),
            telemetry: Default::default(),
        }
    }

    /// Builds and validates the configuration from `serve`'s flags.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        if args.issuers.is_empty() {
            return Err(ConfigError::new(
                "--issuer",
                "no issuer configured; pass --issuer https://<your Clerk Frontend API host> (or set CLERK_ISSUER)",
            ));
        }
        let mut issuers: Vec<IssuerConfig> = Vec::with_capacity(args.issuers.len());
        for raw in &args.issuers {
            let issuer = raw.trim().to_owned();
            validate_issuer(&issuer).map_err(|p| ConfigError::new("--issuer", p))?;
            if issuers.iter().any(|i| i.issuer == issuer) {
                return Err(ConfigError::new("--issuer", format!("{issuer} is given twice; list each issuer once")));
            }
            issuers.push(IssuerConfig::new(issuer));
        }
        let policy = policy_from_args(args)?;
        let refresh = refresh_from_args(args)?;
        for issuer in &mut issuers {
            issuer.policy = policy.clone();
            issuer.refresh = refresh;
        }
        let authz = AuthzConfig::from_args(&args.authz)?;
        Ok(Config {
            issuers,
            shutdown_grace: args.shutdown_grace,
            connections: ConnectionSettings::from_args(args)?,
            clock: Arc::new(SystemClock),
            token_cache_size: check_token_cache_size(args.token_cache_size)?,
            listen: args.listen,
            tls: file::tls_from_flags(args.tls_cert.clone(), args.tls_key.clone(), args.tls_client_ca.clone())?,
            watch_interval: file::check_watch_interval(args.watch_interval)
                .map_err(|p| ConfigError::new("--watch-interval", p))?,
            authz,
            telemetry: Default::default(),
        })
    }
}

fn non_empty_list(flag: &str, values: &[String]) -> Result<Vec<String>, ConfigError> {
    values
        .iter()
        .map(|v| {
            let v = v.trim();
            if v.is_empty() {
                Err(ConfigError::new(flag, "an empty value was given; remove it (or the stray comma)"))
            } else {
                Ok(v.to_owned())
            }
        })
        .collect()
}

/// Checks that each `--authorized-party` that looks like a URL is an
/// origin: Clerk copies the browser's `Origin` header (scheme, host and
/// port; no path, no trailing slash) into `azp`, so `https://app.example.com/`
/// could never match. Returns the problem, for the caller to place.
pub fn check_origins(values: &[String]) -> Result<(), String> {
    for v in values {
        if let Some((scheme, rest)) = v.split_once("://")
            && let Some(slash) = rest.find('/')
        {
            let origin = format!("{scheme}://{}", &rest[..slash]);
            return Err(format!(
                "{v:?} is not an origin: Clerk sets azp to the browser's Origin (scheme://host[:port], no path or trailing slash), so it could never match; use {origin:?}"
            ));
        }
    }
    Ok(())
}

fn policy_from_args(args: &ServeArgs) -> Result<Policy, ConfigError> {
    let roles = non_empty_list("--role", &args.roles)?;
    if roles.is_empty() {
        return Err(ConfigError::new("--role", "at least one role must be allowed (usually authenticated)"));
    }
    if args.clock_skew > MAX_CLOCK_SKEW_SECS {
        return Err(ConfigError::new(
            "--clock-skew",
            format!(
                "{} s is more than the {MAX_CLOCK_SKEW_SECS} s allowed; Clerk session tokens live 60 s, so fix the host clock (NTP) instead",
                args.clock_skew
            ),
        ));
    }
    let algorithms =
        if args.algorithms.is_empty() { AlgorithmSet::all() } else { args.algorithms.iter().copied().collect() };
    let token_kinds = args.accept_token_kinds.iter().copied().fold(TokenKinds::SESSION_ONLY, TokenKinds::with);
    Ok(Policy {
        algorithms,
        audiences: non_empty_list("--audience", &args.audiences)?,
        authorized_parties: {
            let parties = non_empty_list("--authorized-party", &args.authorized_parties)?;
            check_origins(&parties).map_err(|p| ConfigError::new("--authorized-party", p))?;
            parties
        },
        require_azp: args.require_azp,
        roles,
        token_kinds,
        accept_pending_sessions: args.accept_pending_sessions,
        clock_skew: Duration::from_secs(args.clock_skew),
    })
}

fn refresh_from_args(args: &ServeArgs) -> Result<RefreshSettings, ConfigError> {
    if args.refresh_interval < MIN_REFRESH_INTERVAL {
        return Err(ConfigError::new("--refresh-interval", "must be at least 10s (the default is 5m)"));
    }
    if args.unknown_kid_cooldown < MIN_UNKNOWN_KID_COOLDOWN {
        return Err(ConfigError::new(
            "--unknown-kid-cooldown",
            "must be at least 1s, or a flood of tokens with random kids becomes a flood of requests to the issuer",
        ));
    }
    if args.max_key_staleness < args.refresh_interval {
        return Err(ConfigError::new(
            "--max-key-staleness",
            "must be at least the refresh interval, or keys go stale between two refreshes",
        ));
    }
    Ok(RefreshSettings {
        interval: args.refresh_interval,
        unknown_kid_cooldown: args.unknown_kid_cooldown,
        max_staleness: args.max_key_staleness,
        ..RefreshSettings::default()
    })
}

/// Checks an issuer URL: https (http only on a loopback host), a host, no
/// query or fragment.
pub fn validate_issuer(issuer: &str) -> Result<(), String> {
    let uri: http::Uri =
        issuer.parse().map_err(|_| format!("{issuer:?} is not a URL; use e.g. https://clerk.example.com"))?;
    let host = uri.host().ok_or_else(|| format!("{issuer:?} has no host; use e.g. https://clerk.example.com"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(host) => {}
        Some("http") => {
            return Err(format!(
                "{issuer} uses plain http, which is allowed only on a loopback host (127.0.0.0/8, ::1, localhost); use https://{}",
                uri.authority().map_or(host, |a| a.as_str())
            ));
        }
        _ => return Err(format!("{issuer:?} must start with https://")),
    }
    if uri.query().is_some() || issuer.contains('#') {
        return Err(format!("{issuer} has a query or fragment; an issuer identifier has neither"));
    }
    check_key_url(issuer).map_err(|why| format!("{issuer}: {why}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut full = vec!["clerk-introspect", "serve"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full)?.command {
            Command::Serve(a) => Ok(*a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_contract() {
        let args = serve(&["--issuer", "https://clerk.example.com"]).unwrap();
        assert_eq!(args.listen, "0.0.0.0:50051".parse().unwrap());
        let config = Config::from_args(&args).unwrap();
        let issuer = &config.issuers[0];
        assert_eq!(issuer.issuer, "https://clerk.example.com");
        assert_eq!(issuer.policy, Policy::default());
        assert_eq!(issuer.policy.roles, vec!["authenticated"]);
        assert_eq!(issuer.policy.clock_skew, Duration::from_secs(5));
        assert_eq!(issuer.refresh, RefreshSettings::default());
        assert_eq!(config.token_cache_size, DEFAULT_TOKEN_CACHE_SIZE);
    }

    #[test]
    fn token_cache_size_is_bounded_and_can_be_disabled() {
        let off = serve(&["--issuer", "https://a.example.com", "--token-cache-size", "0"]).unwrap();
        assert_eq!(Config::from_args(&off).unwrap().token_cache_size, 0);
        let huge = serve(&["--issuer", "https://a.example.com", "--token-cache-size", "100000000"]).unwrap();
        assert_eq!(Config::from_args(&huge).unwrap_err().flag, "--token-cache-size");
        assert!(serve(&["--issuer", "https://a.example.com", "--token-cache-size", "-1"]).is_err());
    }

    #[test]
    fn repeatable_flags() {
        let args = serve(&[
            "--issuer",
            "https://a.example.com",
            "--issuer",
            "http://127.0.0.1:8080",
            "--role",
            "authenticated",
            "--role",
            "admin",
            "--authorized-party",
            "https://app.example.com",
            "--audience",
            "api",
            "--clock-skew",
            "0",
            "--algorithm",
            "RS256",
            "--accept-token-kind",
            "machine",
        ])
        .unwrap();
        let config = Config::from_args(&args).unwrap();
        assert_eq!(config.issuers.len(), 2);
        let p = &config.issuers[1].policy;
        assert_eq!(p.roles, vec!["authenticated", "admin"]);
        assert_eq!(p.authorized_parties, vec!["https://app.example.com"]);
        assert_eq!(p.audiences, vec!["api"]);
        assert_eq!(p.clock_skew, Duration::ZERO);
        assert!(p.algorithms.contains(Algorithm::RS256) && !p.algorithms.contains(Algorithm::ES256));
        assert!(p.token_kinds.contains(TokenKind::Machine) && p.token_kinds.contains(TokenKind::Session));
    }

    #[test]
    fn bad_configuration_names_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--issuer"),
            (&["--issuer", "http://clerk.example.com"], "--issuer"),
            (&["--issuer", "clerk.example.com"], "--issuer"),
            (&["--issuer", "https://a.example.com", "--issuer", "https://a.example.com"], "--issuer"),
            (&["--issuer", "https://a.example.com?x=1"], "--issuer"),
            (&["--issuer", "https://a.example.com", "--clock-skew", "3600"], "--clock-skew"),
            (&["--issuer", "https://a.example.com", "--unknown-kid-cooldown", "0s"], "--unknown-kid-cooldown"),
            (&["--issuer", "https://a.example.com", "--role", ""], "--role"),
        ];
        for (args, flag) in cases {
            let err = Config::from_args(&serve(args).unwrap()).unwrap_err();
            assert_eq!(err.flag, *flag, "{args:?}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let http = Config::from_args(&serve(&["--issuer", "http://clerk.example.com"]).unwrap()).unwrap_err();
        assert!(http.problem.contains("loopback"), "{http}");
    }

    #[test]
    fn max_connection_age_is_off_by_default_a_duration_or_off_never_zero() {
        let config = |extra: &[&str]| {
            let mut args = vec!["--issuer", "https://a.example.com"];
            args.extend_from_slice(extra);
            Config::from_args(&serve(&args).unwrap())
        };
        let default = config(&[]).unwrap().connections;
        assert_eq!(
            default,
            ConnectionSettings {
                max_age: None,
                max_age_grace: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                max_connections: 4096,
                call_timeout: Duration::from_secs(30),
                max_idle: Some(Duration::from_secs(300)),
                max_calls: 2048,
                max_request_bytes: 16 * 1024 * 1024,
                request_timeout: Duration::from_secs(5),
                max_streams_per_connection: 100,
            }
        );
        let set = config(&[
            "--max-connection-age",
            "10m",
            "--max-connection-age-grace",
            "30s",
            "--handshake-timeout",
            "3s",
            "--max-connections",
            "100",
            "--call-timeout",
            "1m",
            "--max-connection-idle",
            "off",
            "--max-calls-in-flight",
            "50",
            "--max-request-bytes",
            "512KiB",
            "--request-timeout",
            "2s",
            "--max-streams-per-connection",
            "16",
        ])
        .unwrap()
        .connections;
        assert_eq!(
            set,
            ConnectionSettings {
                max_age: Some(Duration::from_secs(600)),
                max_age_grace: Duration::from_secs(30),
                handshake_timeout: Duration::from_secs(3),
                max_connections: 100,
                call_timeout: Duration::from_secs(60),
                max_idle: None,
                max_calls: 50,
                max_request_bytes: 512 * 1024,
                request_timeout: Duration::from_secs(2),
                max_streams_per_connection: 16,
            }
        );
        for (flag, value) in [
            ("--max-connection-idle", "0s"),
            ("--max-calls-in-flight", "0"),
            ("--max-request-bytes", "64KiB"),
            ("--max-request-bytes", "2GiB"),
            ("--request-timeout", "50ms"),
            ("--request-timeout", "31s"),
            ("--max-streams-per-connection", "0"),
        ] {
            assert_eq!(config(&[flag, value]).unwrap_err().flag, flag, "{flag} {value}");
        }
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size(" 65541 "), Ok(65541));
        assert!(parse_size("16MB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(config(&["--max-connection-age", "OFF"]).unwrap().connections.max_age, None);
        let zero = config(&["--max-connection-age", "0s"]).unwrap_err();
        assert_eq!(zero.flag, "--max-connection-age");
        assert!(zero.problem.contains("off for no limit"), "{zero}");
        let bad = serve(&["--issuer", "https://a.example.com", "--max-connection-age", "soon"]).unwrap_err();
        assert!(bad.to_string().contains("or off"), "{bad}");
        let zero = config(&["--handshake-timeout", "0s"]).unwrap_err();
        assert_eq!(zero.flag, "--handshake-timeout");
        assert_eq!(config(&["--call-timeout", "500ms"]).unwrap_err().flag, "--call-timeout");
        for n in ["0", "1000001"] {
            assert_eq!(config(&["--max-connections", n]).unwrap_err().flag, "--max-connections");
        }
    }

    #[test]
    fn metrics_listen_and_log_format() {
        let args = serve(&["--issuer", "https://a.example.com"]).unwrap();
        assert_eq!(args.metrics_listen, MetricsListen::Addr("0.0.0.0:9464".parse().unwrap()));
        let args = serve(&["--issuer", "https://a.example.com", "--metrics-listen", "off"]).unwrap();
        assert_eq!(args.metrics_listen, MetricsListen::Off);
        let args = serve(&["--issuer", "https://a.example.com", "--metrics-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(args.metrics_listen, MetricsListen::Addr("127.0.0.1:0".parse().unwrap()));
        let err = serve(&["--issuer", "https://a.example.com", "--metrics-listen", "9464"]).unwrap_err();
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
        let cli = Cli::try_parse_from(["clerk-introspect", "demo", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["clerk-introspect", "--log-format", "xml", "demo"]).is_err());
    }

    #[test]
    fn authorized_parties_must_be_origins() {
        let config = |party: &str| {
            Config::from_args(&serve(&["--issuer", "https://a.example.com", "--authorized-party", party]).unwrap())
        };
        for origin in ["https://app.example.com", "http://localhost:3000", "my-native-app"] {
            assert!(config(origin).is_ok(), "{origin}");
        }
        for (bad, fix) in [
            ("https://app.example.com/", "\"https://app.example.com\""),
            ("http://localhost:3000/app", "\"http://localhost:3000\""),
        ] {
            let err = config(bad).unwrap_err().to_string();
            assert!(err.starts_with("--authorized-party: "), "{err}");
            assert!(err.contains(&format!("use {fix}")), "{err}");
        }
    }

    #[test]
    fn symmetric_algorithms_cannot_be_configured() {
        let err = serve(&["--issuer", "https://a.example.com", "--algorithm", "HS256"]).unwrap_err();
        assert!(err.to_string().contains("shared-secret"), "{err}");
        assert!(serve(&["--issuer", "https://a.example.com", "--algorithm", "none"]).is_err());
    }
}
