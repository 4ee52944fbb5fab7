//! Every setting of `serve`, named once, in one table ([`Setting`] and its
//! [`Meta`]): its config-file key, flag, environment variable, default and
//! help. The table drives everything that reads settings:
//!
//! - the command line (`cli::serve` builds `serve`'s flags from it, and
//!   turns what was given into two [`Layer`]s, one from the command line
//!   and one from the environment);
//! - the config file ([`super::file`] reads its keys into [`Layer`]s);
//! - the defaults ([`Layer::defaults`]);
//! - error messages, which name a value by where it was given
//!   ([`Origin`]).
//!
//! A [`Layer`] is a partial set of settings, each value typed and
//! remembered with its [`Origin`]; [`super::validate`] merges the layers
//! (defaults < environment < file < command line) and checks them, once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::authz::UnavailableMode;
use super::error::ConfigError;
use crate::keys::jwk::Algorithm;
use crate::verify::{TokenKind, TokenKinds};

/// How a setting takes its value on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One value (`--listen ADDR`).
    One,
    /// Repeatable, and comma-separated in the environment (`--role R`).
    List,
    /// A flag without a value (`--require-azp`); `true`/`false` in the environment.
    Switch,
}

/// Where a setting may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Flags, environment, and a top-level key of the config file.
    Server,
    /// Flags and environment (for every issuer), and a key of each
    /// `[[issuers]]` table (for that issuer).
    Issuer,
    /// Flags and environment only (not in the config file: what a reload
    /// could not apply, or what belongs to the process).
    Process,
    /// A key of an `[[issuers]]` table only (the issuer and its key source).
    FileIssuer,
}

/// What the table says of one setting.
#[derive(Debug)]
pub struct Meta {
    /// The config-file key (`tls.cert` for a key of the `[tls]` table);
    /// also the setting's name in code and in `--check-config`.
    pub key: &'static str,
    /// The flag, without its dashes; empty for file-only settings.
    pub flag: &'static str,
    /// The environment variable; empty for none.
    pub env: &'static str,
    /// The value's name in `--help` (`DURATION`, `ADDR`).
    pub value_name: &'static str,
    /// The default, as it would be written on the command line (a list
    /// comma-separated); `None`: unset by default.
    pub default: Option<&'static str>,
    /// How it is given on the command line.
    pub kind: Kind,
    /// Where it may be given.
    pub scope: Scope,
    /// The help text of the flag (one paragraph).
    pub help: &'static str,
    /// Whether its values are secrets: `--help` never shows the value of
    /// its environment variable, and [`Secrets`] keeps them out of `Debug`.
    pub secret: bool,
}

/// Where a value came from, to name it in an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default(Setting),
    /// The setting's environment variable.
    Env(Setting),
    /// The command line.
    CommandLine(Setting),
    /// The config file: `file:line: key`.
    File(String),
}

impl Origin {
    /// How an error names the value: the flag (also for a value from the
    /// environment or a default, which is what a person would change) or
    /// the file position and key.
    pub fn name(&self) -> String {
        match self {
            Origin::Default(s) | Origin::Env(s) | Origin::CommandLine(s) => s.flag_name(),
            Origin::File(at) => at.clone(),
        }
    }

    /// An error about the value from here.
    pub fn error(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(self.name(), problem)
    }

    /// Whether the value was given in the config file.
    pub fn is_file(&self) -> bool {
        matches!(self, Origin::File(_))
    }
}

/// A value and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it was given.
    pub origin: Origin,
}

impl<T> Sourced<T> {
    /// An error about this value.
    pub fn error(&self, problem: impl Into<String>) -> ConfigError {
        self.origin.error(problem)
    }
}

/// A setting's value type: read from the command line or environment (as
/// the strings given) and from the config file.
pub trait Value: Sized {
    /// From what was given on the command line or in the environment: one
    /// string, or each item of a list.
    fn from_strs(values: &[String]) -> Result<Self, String>;
    /// From the config file; relative paths are relative to `base`.
    fn from_toml(value: &DeValue<'_>, base: &Path) -> Result<Self, String>;
}

fn one(values: &[String]) -> Result<&str, String> {
    match values {
        [v] => Ok(v.as_str()),
        _ => Err(format!("expected one value, got {}", values.len())),
    }
}

/// The type of a TOML value, for "invalid type" messages.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref() as &str),
        DeValue::Integer(i) => format!("integer `{}`", i.as_str()),
        DeValue::Float(f) => format!("float `{}`", f.as_str()),
        DeValue::Boolean(b) => format!("boolean `{b}`"),
        DeValue::Datetime(d) => format!("datetime `{d}`"),
        DeValue::Array(_) => "array".to_owned(),
        DeValue::Table(_) => "table".to_owned(),
    }
}

fn invalid_type(v: &DeValue<'_>, expected: &str) -> String {
    format!("invalid type: {}, expected {expected}", describe(v))
}

fn toml_str<'v>(v: &'v DeValue<'_>, expected: &str) -> Result<&'v str, String> {
    v.as_str().ok_or_else(|| invalid_type(v, expected))
}

fn toml_int(v: &DeValue<'_>) -> Option<i64> {
    let i = v.as_integer()?;
    i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

/// Parses a duration such as `500ms`, `10s`, `5m` or `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m, 24h)"))
}

impl Value for Duration {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        parse_duration(one(values)?)
    }

    /// A string such as `"5m"`, or a whole number of seconds.
    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        if let Some(s) = v.as_str() {
            return parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"));
        }
        match toml_int(v) {
            Some(n) => {
                u64::try_from(n).map(Duration::from_secs).map_err(|_| format!("a duration cannot be negative ({n})"))
            }
            None => Err(invalid_type(v, "a duration such as \"10s\", \"5m\", \"24h\" or a whole number of seconds")),
        }
    }
}

/// A duration given on the command line as a whole number of seconds
/// (`--clock-skew 5`), in the file as any duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl Value for Seconds {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        let s = one(values)?.trim();
        s.parse::<u64>().map(|n| Seconds(Duration::from_secs(n))).map_err(|e| format!("{s:?}: {e} (whole seconds)"))
    }

    fn from_toml(v: &DeValue<'_>, base: &Path) -> Result<Self, String> {
        Duration::from_toml(v, base).map(Seconds)
    }
}

/// A duration that can also be `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

impl Value for OptionalDuration {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        let s = one(values)?;
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(OptionalDuration(None));
        }
        parse_duration(s).map(|d| OptionalDuration(Some(d))).map_err(|e| format!("{e}, or off"))
    }

    fn from_toml(v: &DeValue<'_>, base: &Path) -> Result<Self, String> {
        match v.as_str() {
            Some(s) if s.trim().eq_ignore_ascii_case("off") => Ok(OptionalDuration(None)),
            _ => Duration::from_toml(v, base).map(|d| OptionalDuration(Some(d))),
        }
    }
}

/// A size in bytes: a number, optionally followed by `KiB`, `MiB` or `GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub usize);

/// Parses a size: a number, optionally followed by `KiB`, `MiB` or `GiB`.
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

impl Value for Size {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        parse_size(one(values)?).map(Size)
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        match (v.as_str(), toml_int(v)) {
            (Some(s), _) => parse_size(s).map(Size),
            (_, Some(n)) => usize::try_from(n).map(Size).map_err(|_| format!("a size cannot be negative ({n})")),
            _ => Err(invalid_type(v, "a size such as \"16MiB\" or a number of bytes")),
        }
    }
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn from_strs(values: &[String]) -> Result<Self, String> {
                let s = one(values)?.trim();
                s.parse::<$t>().map_err(|e| format!("{s:?}: {e}"))
            }

            fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
                let n = toml_int(v).ok_or_else(|| invalid_type(v, "an integer"))?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range"))
            }
        }
    )*};
}
integer_value!(usize, u32);

impl Value for bool {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        match one(values)?.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("{other:?} is neither true nor false")),
        }
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| invalid_type(v, "a boolean"))
    }
}

impl Value for String {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        one(values).map(str::to_owned)
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        toml_str(v, "a string").map(str::to_owned)
    }
}

impl Value for SocketAddr {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        let s = one(values)?;
        s.trim().parse().map_err(|_| format!("{s:?} is not an address; use e.g. \"0.0.0.0:50051\" or \"[::]:50051\""))
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        Self::from_strs(&[toml_str(v, "an address such as \"0.0.0.0:50051\"")?.to_owned()])
    }
}

impl Value for PathBuf {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        one(values).map(PathBuf::from)
    }

    /// Relative to the config file's directory.
    fn from_toml(v: &DeValue<'_>, base: &Path) -> Result<Self, String> {
        let p = Path::new(toml_str(v, "a file path")?.trim());
        Ok(if p.is_absolute() { p.to_owned() } else { base.join(p) })
    }
}

impl Value for Vec<String> {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        Ok(values.to_vec())
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        let items = v.as_array().ok_or_else(|| invalid_type(v, "an array of strings"))?;
        items.iter().map(|i| toml_str(i.get_ref(), "a string").map(str::to_owned)).collect()
    }
}

impl Value for Vec<Algorithm> {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        values.iter().map(|v| v.parse()).collect()
    }

    fn from_toml(v: &DeValue<'_>, base: &Path) -> Result<Self, String> {
        Self::from_strs(&Vec::<String>::from_toml(v, base)?)
    }
}

/// The token kinds accepted. On the command line, kinds accepted besides
/// session tokens (`--accept-token-kind machine`); in the file, the whole
/// list (`token_kinds = ["session", "machine"]`).
impl Value for TokenKinds {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        values.iter().try_fold(TokenKinds::SESSION_ONLY, |kinds, v| Ok(kinds.with(v.parse::<TokenKind>()?)))
    }

    fn from_toml(v: &DeValue<'_>, base: &Path) -> Result<Self, String> {
        Vec::<String>::from_toml(v, base)?
            .iter()
            .try_fold(TokenKinds::empty(), |kinds, v| Ok(kinds.with(v.parse::<TokenKind>()?)))
    }
}

/// Secret strings (webhook signing secrets): a list whose `Debug` shows
/// only how many there are. On the command line and in the environment,
/// items are separated by commas or white space.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Value for Secrets {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        Ok(Secrets(values.iter().flat_map(|v| v.split([',', ' ', '\t', '\n'])).map(str::to_owned).collect()))
    }

    fn from_toml(v: &DeValue<'_>, base: &Path) -> Result<Self, String> {
        // Never echo the value: describe() would quote a string.
        match v {
            DeValue::Array(_) => Vec::<String>::from_toml(v, base)
                .map(Secrets)
                .map_err(|_| "invalid type: expected an array of strings".to_owned()),
            _ => Err("invalid type: expected an array of strings such as [\"whsec_…\"]".to_owned()),
        }
    }
}

/// Where the HTTP metrics and probe endpoint listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// Not served.
    Off,
    /// This address.
    Addr(SocketAddr),
}

impl Value for MetricsListen {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        let s = one(values)?.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen::Off);
        }
        s.parse()
            .map(MetricsListen::Addr)
            .map_err(|_| format!("{s:?} is neither an address (e.g. 0.0.0.0:9464) nor off"))
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        Self::from_strs(&[toml_str(v, "an address or \"off\"")?.to_owned()])
    }
}

impl Value for UnavailableMode {
    fn from_strs(values: &[String]) -> Result<Self, String> {
        one(values)?.parse()
    }

    fn from_toml(v: &DeValue<'_>, _: &Path) -> Result<Self, String> {
        toml_str(v, "a string")?.parse()
    }
}

macro_rules! settings {
    ($(
        $(#[$doc:meta])*
        $variant:ident, $field:ident: $ty:ty = $meta:expr;
    )*) => {
        /// A setting of `serve` (see the [module docs](self)).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Setting {
            $($(#[$doc])* $variant,)*
        }

        impl Setting {
            /// Every setting, in `--help` order.
            pub const ALL: &'static [Setting] = &[$(Setting::$variant),*];

            /// What the table says of it.
            pub fn meta(self) -> &'static Meta {
                match self {
                    $(Setting::$variant => { const META: Meta = $meta; &META })*
                }
            }
        }

        /// One layer of settings: those given in one place (defaults,
        /// environment, config file or one of its `[[issuers]]` tables,
        /// command line), each with where it was given.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Layer {
            $(
                #[doc = concat!("`", stringify!($field), "`")]
                pub $field: Option<Sourced<$ty>>,
            )*
        }

        impl Layer {
            /// Sets `setting` from what was given on the command line or in
            /// the environment.
            pub fn set_strs(&mut self, setting: Setting, values: &[String], origin: Origin) -> Result<(), ConfigError> {
                match setting {
                    $(Setting::$variant => {
                        let value = <$ty as Value>::from_strs(values).map_err(|p| origin.error(p))?;
                        self.$field = Some(Sourced { value, origin });
                    })*
                }
                Ok(())
            }

            /// Sets `setting` from a config-file value (relative paths are
            /// relative to `base`).
            pub fn set_toml(&mut self, setting: Setting, value: &DeValue<'_>, base: &Path, origin: Origin) -> Result<(), ConfigError> {
                match setting {
                    $(Setting::$variant => {
                        let value = <$ty as Value>::from_toml(value, base).map_err(|p| origin.error(p))?;
                        self.$field = Some(Sourced { value, origin });
                    })*
                }
                Ok(())
            }

            /// Lays `top` over this layer: every setting `top` has wins.
            pub fn overlay(&mut self, top: &Layer) {
                $(if top.$field.is_some() { self.$field = top.$field.clone(); })*
            }

            /// Where `setting` was given in this layer, if it was.
            pub fn origin(&self, setting: Setting) -> Option<&Origin> {
                match setting {
                    $(Setting::$variant => self.$field.as_ref().map(|v| &v.origin),)*
                }
            }
        }
    };
}

/// A table entry's [`Meta`].
#[allow(clippy::too_many_arguments)]
const fn meta(
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    value_name: &'static str,
    default: Option<&'static str>,
    kind: Kind,
    scope: Scope,
    help: &'static str,
) -> Meta {
    Meta { key, flag, env, value_name, default, kind, scope, help, secret: false }
}

/// A table entry whose values are secrets (see [`Meta::secret`]).
const fn secret(meta: Meta) -> Meta {
    Meta { secret: true, ..meta }
}

use Kind::{List, One, Switch};
use Scope::{FileIssuer, Issuer, Process, Server};

settings! {
    /// `--listen`.
    Listen, listen: SocketAddr = meta("listen", "listen", "INTROSPECT_LISTEN", "ADDR", Some("0.0.0.0:50051"), One, Server,
        "gRPC listen address.");
    /// `--issuer`.
    Issuers, issuers: Vec<String> = meta("issuers", "issuer", "CLERK_ISSUER", "URL", None, List, Process,
        "A trusted issuer (repeatable), e.g. `https://clerk.example.com`. Keys come from `URL/.well-known/openid-configuration` → `jwks_uri`. https is required except on a loopback host. With --config the issuers come from the file.");
    /// `--authorized-party`.
    AuthorizedParties, authorized_parties: Vec<String> = meta("authorized_parties", "authorized-party", "CLERK_AUTHORIZED_PARTIES", "ORIGIN", None, List, Issuer,
        "Allowed azp values (repeatable): origins such as https://app.example.com. Default: azp not checked.");
    /// `--audience`.
    Audiences, audiences: Vec<String> = meta("audiences", "audience", "CLERK_AUDIENCES", "AUD", None, List, Issuer,
        "Audiences (repeatable): one of them must be in aud. Default: aud not checked.");
    /// `--role`.
    Roles, roles: Vec<String> = meta("roles", "role", "INTROSPECT_ROLES", "ROLE", Some("authenticated"), List, Issuer,
        "Allowed values of the role claim (repeatable).");
    /// `--clock-skew`.
    ClockSkew, clock_skew: Seconds = meta("clock_skew", "clock-skew", "INTROSPECT_CLOCK_SKEW", "SECONDS", Some("5"), One, Issuer,
        "Leeway for exp, nbf and iat, in seconds (at most 300).");
    /// `--require-azp`.
    RequireAzp, require_azp: bool = meta("require_azp", "require-azp", "INTROSPECT_REQUIRE_AZP", "", Some("false"), Switch, Issuer,
        "Require an azp claim (Clerk omits it on tokens minted without an Origin header).");
    /// `--algorithm`.
    Algorithms, algorithms: Vec<Algorithm> = meta("algorithms", "algorithm", "INTROSPECT_ALGORITHMS", "ALG", Some("RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,EdDSA"), List, Issuer,
        "Allowed signature algorithms (repeatable). HS* and none can never be allowed.");
    /// `--accept-token-kind`.
    TokenKinds, token_kinds: TokenKinds = meta("token_kinds", "accept-token-kind", "INTROSPECT_ACCEPT_TOKEN_KINDS", "KIND", None, List, Issuer,
        "Also accept tokens of this kind besides session tokens (repeatable): jwt-template, machine, oauth. In the config file, token_kinds is the whole list (session included).");
    /// `--accept-pending-sessions`.
    AcceptPendingSessions, accept_pending_sessions: bool = meta("accept_pending_sessions", "accept-pending-sessions", "INTROSPECT_ACCEPT_PENDING_SESSIONS", "", Some("false"), Switch, Issuer,
        "Accept pending sessions (sts \"pending\"), which Clerk treats as signed out.");
    /// `--refresh-interval`.
    RefreshInterval, refresh_interval: Duration = meta("refresh_interval", "refresh-interval", "INTROSPECT_REFRESH_INTERVAL", "DURATION", Some("5m"), One, Issuer,
        "Interval between key refreshes when the JWKS has no Cache-Control max-age (which is used instead, clamped to 1 min..1 h); at least 10s.");
    /// `--unknown-kid-cooldown`.
    UnknownKidCooldown, unknown_kid_cooldown: Duration = meta("unknown_kid_cooldown", "unknown-kid-cooldown", "INTROSPECT_UNKNOWN_KID_COOLDOWN", "DURATION", Some("10s"), One, Issuer,
        "Least time between two refetches triggered by an unknown kid, per issuer; at least 1s.");
    /// `--max-key-staleness`.
    MaxKeyStaleness, max_key_staleness: Duration = meta("max_key_staleness", "max-key-staleness", "INTROSPECT_MAX_KEY_STALENESS", "DURATION", Some("24h"), One, Issuer,
        "How long the last good keys stay in use while refreshes fail; past it the issuer has no keys (UNAVAILABLE, NOT_SERVING).");
    /// `--shutdown-grace`.
    ShutdownGrace, shutdown_grace: Duration = meta("shutdown_grace", "shutdown-grace", "INTROSPECT_SHUTDOWN_GRACE", "DURATION", Some("20s"), One, Server,
        "Longest wait for in-flight calls after SIGTERM before the process exits anyway.");
    /// `--max-connection-age`.
    MaxConnectionAge, max_connection_age: OptionalDuration = meta("max_connection_age", "max-connection-age", "INTROSPECT_MAX_CONNECTION_AGE", "DURATION|off", Some("off"), One, Process,
        "Age at which a client connection is asked to go away (HTTP/2 GOAWAY, gRPC's MAX_CONNECTION_AGE): its client reconnects, re-resolves and so spreads over new replicas. off: connections live as long as their clients keep them.");
    /// `--max-connection-age-grace`.
    MaxConnectionAgeGrace, max_connection_age_grace: Duration = meta("max_connection_age_grace", "max-connection-age-grace", "INTROSPECT_MAX_CONNECTION_AGE_GRACE", "DURATION", Some("10s"), One, Process,
        "After that GOAWAY, how long calls in progress have before the connection is closed.");
    /// `--call-timeout`.
    CallTimeout, call_timeout: Duration = meta("call_timeout", "call-timeout", "INTROSPECT_CALL_TIMEOUT", "DURATION", Some("30s"), One, Process,
        "Longest a call may take, from its headers to its answer, when its client set no shorter deadline (grpc-timeout); answered CANCELLED then. At least 1s.");
    /// `--max-connections`.
    MaxConnections, max_connections: usize = meta("max_connections", "max-connections", "INTROSPECT_MAX_CONNECTIONS", "N", Some("4096"), One, Process,
        "Most client connections open at once on the gRPC listener. With every slot taken, a new client makes room: an idle connection (no call in progress; one that never made a call first, then the one idle the longest) gets GOAWAY; only when none is idle do new clients wait in the listen backlog. Lowered at start if the open-files limit cannot hold it.");
    /// `--max-connection-idle`.
    MaxConnectionIdle, max_connection_idle: OptionalDuration = meta("max_connection_idle", "max-connection-idle", "INTROSPECT_MAX_CONNECTION_IDLE", "DURATION|off", Some("5m"), One, Process,
        "Close (HTTP/2 GOAWAY) a client connection that has had no call in progress for this long (gRPC's MAX_CONNECTION_IDLE); its client reconnects when it next calls. off: idle connections stay.");
    /// `--max-calls-in-flight`.
    MaxCallsInFlight, max_calls_in_flight: usize = meta("max_calls_in_flight", "max-calls-in-flight", "INTROSPECT_MAX_CALLS_IN_FLIGHT", "N", Some("2048"), One, Process,
        "Most calls in progress at once on the gRPC listener, across all connections; a call past it is answered RESOURCE_EXHAUSTED at once (health checks have 64 more of their own). Keep it below --max-connections, so that a full connection table always has an idle connection to close for a new client.");
    /// `--max-request-bytes`.
    MaxRequestBytes, max_request_bytes: Size = meta("max_request_bytes", "max-request-bytes", "INTROSPECT_MAX_REQUEST_BYTES", "BYTES", Some("16MiB"), One, Process,
        "Most bytes of requests held at once across all calls (read, not yet answered): a call whose request does not fit is answered RESOURCE_EXHAUSTED. Bytes, or with a KiB, MiB or GiB suffix.");
    /// `--request-timeout`.
    RequestTimeout, request_timeout: Duration = meta("request_timeout", "request-timeout", "INTROSPECT_REQUEST_TIMEOUT", "DURATION", Some("5s"), One, Process,
        "Time a call's request has, from its headers, to arrive whole; a call still waiting for it then is answered DEADLINE_EXCEEDED and its stream freed.");
    /// `--max-streams-per-connection`.
    MaxStreamsPerConnection, max_streams_per_connection: u32 = meta("max_streams_per_connection", "max-streams-per-connection", "INTROSPECT_MAX_STREAMS_PER_CONNECTION", "N", Some("100"), One, Process,
        "Most calls in progress at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).");
    /// `--handshake-timeout`.
    HandshakeTimeout, handshake_timeout: Duration = meta("handshake_timeout", "handshake-timeout", "INTROSPECT_HANDSHAKE_TIMEOUT", "DURATION", Some("10s"), One, Process,
        "Time a new connection has, from its accept, to complete the TLS handshake (with TLS) and send the HTTP/2 connection preface; a connection that has not is closed.");
    /// `--token-cache-size`.
    TokenCacheSize, token_cache_size: usize = meta("token_cache_size", "token-cache-size", "INTROSPECT_TOKEN_CACHE_SIZE", "TOKENS", Some("100000"), One, Process,
        "Tokens remembered after a successful check, so that a token sent again skips its signature check (about 100 bytes each), the most used of them whole (within 128 bytes × this); policy and expiry are still checked on every call. 0 disables the cache.");
    /// `--config`.
    ConfigFile, config: PathBuf = meta("config", "config", "INTROSPECT_CONFIG", "FILE", None, One, Process,
        "A TOML config file: issuers with per-issuer policy and key sources, listener, TLS. Re-read on SIGHUP and when it changes. A flag given on the command line wins over the file; the file wins over environment variables.");
    /// `--tls-cert`.
    TlsCert, tls_cert: PathBuf = meta("tls.cert", "tls-cert", "INTROSPECT_TLS_CERT", "FILE", None, One, Server,
        "PEM certificate chain: serve gRPC over TLS (with --tls-key). Reloaded when the file changes.");
    /// `--tls-key`.
    TlsKey, tls_key: PathBuf = meta("tls.key", "tls-key", "INTROSPECT_TLS_KEY", "FILE", None, One, Server,
        "PEM private key of --tls-cert.");
    /// `--tls-client-ca`.
    TlsClientCa, tls_client_ca: PathBuf = meta("tls.client_ca", "tls-client-ca", "INTROSPECT_TLS_CLIENT_CA", "FILE", None, One, Server,
        "PEM CA certificate(s): require every caller to present a client certificate issued by one of them (mTLS).");
    /// `--watch-interval`.
    WatchInterval, watch_interval: Duration = meta("watch_interval", "watch-interval", "INTROSPECT_WATCH_INTERVAL", "DURATION", Some("5s"), One, Server,
        "How often the config file (and the files it names) and the TLS files are checked for changes; 0 turns checking off (SIGHUP still reloads), else at least 100ms.");
    /// `--authz-token-header`.
    AuthzTokenHeader, authz_token_header: String = meta("authz_token_header", "authz-token-header", "INTROSPECT_AUTHZ_TOKEN_HEADER", "NAME", Some("authorization"), One, Process,
        "ext_authz: request header that carries the token, as `Bearer <token>` (scheme in any case). In a header other than authorization, a bare token is accepted too.");
    /// `--authz-session-cookie`.
    AuthzSessionCookie, authz_session_cookie: String = meta("authz_session_cookie", "authz-session-cookie", "INTROSPECT_AUTHZ_SESSION_COOKIE", "NAME", Some("__session"), One, Process,
        "ext_authz: cookie read when the header carries no token: Clerk's __session, also in its suffixed form `NAME_<suffix>`.");
    /// `--authz-no-cookie`.
    AuthzNoCookie, authz_no_cookie: bool = meta("authz_no_cookie", "authz-no-cookie", "INTROSPECT_AUTHZ_NO_COOKIE", "", Some("false"), Switch, Process,
        "ext_authz: never read a token from cookies (the header only).");
    /// `--authz-identity-header`.
    AuthzIdentityHeaders, authz_identity_headers: Vec<String> = meta("authz_identity_headers", "authz-identity-header", "INTROSPECT_AUTHZ_IDENTITY_HEADERS", "FIELD[=HEADER]", None, List, Process,
        "ext_authz: identity headers set on allowed requests (repeatable), FIELD or FIELD=HEADER; FIELD is user-id, session-id, org-id, org-role, org-slug, role, authorized-party or issuer. Given at all, it replaces the default set: user-id, session-id, org-id, org-role, role as `x-clerk-<field>`.");
    /// `--authz-claim-header`.
    AuthzClaimHeaders, authz_claim_headers: Vec<String> = meta("authz_claim_headers", "authz-claim-header", "INTROSPECT_AUTHZ_CLAIM_HEADERS", "CLAIM=HEADER", None, List, Process,
        "ext_authz: also set a header from a top-level claim (repeatable), CLAIM=HEADER. Only strings, numbers and booleans of at most 1 KiB are set; anything else leaves the header removed.");
    /// `--authz-bypass-cors-preflight`.
    AuthzBypassCorsPreflight, authz_bypass_cors_preflight: bool = meta("authz_bypass_cors_preflight", "authz-bypass-cors-preflight", "INTROSPECT_AUTHZ_BYPASS_CORS_PREFLIGHT", "BOOL", Some("true"), One, Process,
        "ext_authz: let CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) through without a token, as Envoy's bypass_cors_preflight does.");
    /// `--authz-unavailable`.
    AuthzUnavailable, authz_unavailable: UnavailableMode = meta("authz_unavailable", "authz-unavailable", "INTROSPECT_AUTHZ_UNAVAILABLE", "MODE", Some("denied-response"), One, Process,
        "ext_authz: the answer when the token's issuer has no usable keys. denied-response: a CheckResponse with status UNAVAILABLE and a 503 denied response with a JSON body (Envoy sends the 503; a denial, so failure_mode_allow does not apply). grpc-error: the RPC fails with UNAVAILABLE, so Envoy applies failure_mode_allow and status_on_error (any Envoy version). error-response: status UNAVAILABLE and a 503 error_response (Envoy 1.37 or later applies failure_mode_allow; older versions read it as a 403 denial).");
    /// `--metrics-listen`.
    MetricsListenAddr, metrics_listen: MetricsListen = meta("metrics_listen", "metrics-listen", "INTROSPECT_METRICS_LISTEN", "ADDR|off", Some("0.0.0.0:9464"), One, Process,
        "HTTP address for Prometheus /metrics and the /healthz and /readyz probes, or off.");
    /// `--revocation-store`.
    RevocationStore, revocation_store: String = meta("revocation_store", "revocation-store", "INTROSPECT_REVOCATION_STORE", "URL", None, One, Process,
        "Where revocations are shared between replicas: a Redis URL, redis://host:6379 or rediss://host:6380 (TLS), optionally with :password@ and /db. Each accepted revocation is appended to a Redis Stream; every replica reads it continuously and replays the retention window at start-up before it reports SERVING. Unset: in-process, revocations reach only the replica that receives them.");
    /// `--revocation-store-password-file`.
    RevocationStorePasswordFile, revocation_store_password_file: PathBuf = meta("revocation_store_password_file", "revocation-store-password-file", "INTROSPECT_REVOCATION_STORE_PASSWORD_FILE", "FILE", None, One, Process,
        "A file holding the Redis password (a mounted Secret), used when the URL has none. INTROSPECT_REVOCATION_STORE_PASSWORD gives it from the environment instead.");
    /// `INTROSPECT_REVOCATION_STORE_PASSWORD`.
    RevocationStorePassword, revocation_store_password: String = meta("revocation_store_password", "revocation-store-password", "INTROSPECT_REVOCATION_STORE_PASSWORD", "PASSWORD", None, One, Process,
        "The Redis password, when the URL has none. Prefer the environment variable or --revocation-store-password-file: a flag's value shows in the process list.");
    /// `--revocation-retention`.
    RevocationRetention, revocation_retention: Duration = meta("revocation_retention", "revocation-retention", "INTROSPECT_REVOCATION_RETENTION", "DURATION", Some("24h"), One, Process,
        "How long a revocation is kept after its event: the longest a token accepted by this server can live (Clerk session tokens live 60 s; JWT templates longer). Also the window replayed from the store at start-up. From 1m to 30 days.");
    /// `--revocation-max-entries`.
    RevocationMaxEntries, revocation_max_entries: usize = meta("revocation_max_entries", "revocation-max-entries", "INTROSPECT_REVOCATION_MAX_ENTRIES", "N", Some("1000000"), One, Process,
        "Most revocations held (sessions, users, memberships, organizations; about 200 bytes each). When full, new revocations are refused, never evicting one (the webhook answers 5xx so Clerk retries once entries expire); a metric and a warning say so.");
    /// `--revocation-store-required`.
    RevocationStoreRequired, revocation_store_required: bool = meta("revocation_store_required", "revocation-store-required", "INTROSPECT_REVOCATION_STORE_REQUIRED", "", Some("false"), Switch, Process,
        "Fail closed: report NOT_SERVING while the revocation store has been unreachable for longer than --revocation-store-outage-limit, and until the start-up replay is done. By default a store outage does not take authentication down: revocations already applied stay enforced, and the gauge clerk_introspect_revocation_store_up and an alert say so.");
    /// `--revocation-store-outage-limit`.
    RevocationStoreOutageLimit, revocation_store_outage_limit: Duration = meta("revocation_store_outage_limit", "revocation-store-outage-limit", "INTROSPECT_REVOCATION_STORE_OUTAGE_LIMIT", "DURATION", Some("30s"), One, Process,
        "With --revocation-store-required: how long the store may be unreachable before the replica reports NOT_SERVING. Without it: how long a starting replica waits for the replay before it serves anyway (and replays as soon as the store answers). At least 1s.");
    /// `--webhook-listen`.
    WebhookListenAddr, webhook_listen: MetricsListen = meta("webhook_listen", "webhook-listen", "INTROSPECT_WEBHOOK_LISTEN", "ADDR|off", Some("off"), One, Server,
        "HTTP address for Clerk's webhooks (POST /webhooks/clerk, signed by Svix), or off. Expose it to the internet through an Ingress for that path only, never the metrics port. Needs a signing secret (--webhook-signing-secret or --webhook-signing-secret-file). A reload cannot change it.");
    /// `--webhook-signing-secret`.
    WebhookSigningSecrets, webhook_signing_secrets: Secrets = secret(meta("webhook_signing_secrets", "webhook-signing-secret", "CLERK_WEBHOOK_SIGNING_SECRET", "whsec_...", None, List, Server,
        "The webhook endpoint's Signing Secret from the Clerk dashboard, whsec_ then base64 (repeatable; comma- or space-separated in the environment). A delivery signed with any configured secret passes: give the old and the new one while rotating. Prefer --webhook-signing-secret-file, which keeps it out of the process's environment and arguments."));
    /// `--webhook-signing-secret-file`.
    WebhookSigningSecretFile, webhook_signing_secret_file: PathBuf = meta("webhook_signing_secret_file", "webhook-signing-secret-file", "INTROSPECT_WEBHOOK_SIGNING_SECRET_FILE", "FILE", None, One, Server,
        "A file of webhook signing secrets, one per line (blank lines and # comments skipped), such as a mounted Kubernetes Secret; used together with --webhook-signing-secret. Re-read on SIGHUP, and when it changes if the config file names it.");
    /// `--webhook-max-body-bytes`.
    WebhookMaxBodyBytes, webhook_max_body_bytes: Size = meta("webhook_max_body_bytes", "webhook-max-body-bytes", "INTROSPECT_WEBHOOK_MAX_BODY_BYTES", "BYTES", Some("256KiB"), One, Server,
        "Largest webhook body read; a larger one is answered 413. Clerk's largest events (user.updated with metadata) are a few KiB. Bytes, or with a KiB or MiB suffix; 1KiB to 16MiB.");
    /// An issuer of the config file.
    Issuer, issuer: String = meta("issuer", "", "", "", None, One, FileIssuer,
        "The issuer identifier, compared exactly with iss.");
    /// A fixed JWKS URI (no discovery).
    JwksUri, jwks_uri: String = meta("jwks_uri", "", "", "", None, One, FileIssuer,
        "Fetch keys from this JWKS URI instead of discovering it.");
    /// A JWKS file (no network).
    JwksFile, jwks_file: PathBuf = meta("jwks_file", "", "", "", None, One, FileIssuer,
        "Keys from this JWKS file; nothing is fetched.");
    /// A PEM public key (no network).
    PublicKeyPem, public_key_pem: String = meta("public_key_pem", "", "", "", None, One, FileIssuer,
        "One PEM public key (Clerk's \"JWKS Public Key\"); nothing is fetched.");
    /// A PEM public key file (no network).
    PublicKeyFile, public_key_file: PathBuf = meta("public_key_file", "", "", "", None, One, FileIssuer,
        "One PEM public key, from a file; nothing is fetched.");
    /// The kid of the PEM key.
    PublicKeyKid, public_key_kid: String = meta("public_key_kid", "", "", "", None, One, FileIssuer,
        "The kid of public_key_pem or public_key_file (Clerk's instance id).");
}

impl Setting {
    /// How errors and `--help` name it: `--flag`, or the file key for a
    /// file-only setting.
    pub fn flag_name(self) -> String {
        let meta = self.meta();
        if meta.flag.is_empty() { meta.key.to_owned() } else { format!("--{}", meta.flag) }
    }

    /// The setting whose config-file key (in `scope`) is `key`.
    pub fn by_file_key(key: &str, scopes: &[Scope]) -> Option<Setting> {
        Setting::ALL.iter().copied().find(|s| s.meta().key == key && scopes.contains(&s.meta().scope))
    }

    /// The config-file keys of `scopes`, for "expected one of" messages.
    pub fn file_keys(scopes: &[Scope]) -> impl Iterator<Item = &'static str> {
        Setting::ALL.iter().filter(move |s| scopes.contains(&s.meta().scope)).map(|s| s.meta().key)
    }
}

impl Layer {
    /// Every setting's default.
    pub fn defaults() -> Layer {
        let mut layer = Layer::default();
        for &setting in Setting::ALL {
            let meta = setting.meta();
            let Some(default) = meta.default else { continue };
            let values: Vec<String> = match meta.kind {
                Kind::List => default.split(',').map(str::to_owned).collect(),
                Kind::One | Kind::Switch => vec![default.to_owned()],
            };
            // The table's own defaults parse (a unit test checks every one);
            // a default that did not would be left unset, not a panic.
            let _ = layer.set_strs(setting, &values, Origin::Default(setting));
        }
        // Kinds default to session tokens only (the list is empty).
        layer.token_kinds =
            Some(Sourced { value: TokenKinds::SESSION_ONLY, origin: Origin::Default(Setting::TokenKinds) });
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_every_name_is_unique() {
        let defaults = Layer::defaults();
        for &s in Setting::ALL {
            let meta = s.meta();
            assert_eq!(defaults.origin(s).is_some(), meta.default.is_some() || s == Setting::TokenKinds, "{s:?}");
            assert!(!meta.help.is_empty(), "{s:?}");
            assert_eq!(meta.flag.is_empty(), meta.scope == Scope::FileIssuer, "{s:?}: file-only settings have no flag");
            assert_eq!(meta.env.is_empty(), meta.scope == Scope::FileIssuer, "{s:?}");
            for &other in Setting::ALL {
                if other != s {
                    assert_ne!(meta.key, other.meta().key, "{s:?} and {other:?}");
                    if !meta.flag.is_empty() {
                        assert_ne!(meta.flag, other.meta().flag, "{s:?} and {other:?}");
                        assert_ne!(meta.env, other.meta().env, "{s:?} and {other:?}");
                    }
                }
            }
        }
        assert_eq!(defaults.listen.unwrap().value, "0.0.0.0:50051".parse::<SocketAddr>().unwrap());
        assert_eq!(defaults.roles.unwrap().value, vec!["authenticated"]);
        assert_eq!(defaults.algorithms.unwrap().value.len(), 9);
    }

    #[test]
    fn layers_overlay_setting_by_setting_and_remember_where() {
        let mut bottom = Layer::defaults();
        let mut top = Layer::default();
        top.set_strs(Setting::ClockSkew, &["9".into()], Origin::CommandLine(Setting::ClockSkew)).unwrap();
        bottom.overlay(&top);
        let skew = bottom.clock_skew.unwrap();
        assert_eq!(skew.value, Seconds(Duration::from_secs(9)));
        assert_eq!(skew.origin.name(), "--clock-skew");
        assert_eq!(bottom.refresh_interval.unwrap().origin, Origin::Default(Setting::RefreshInterval));
    }

    #[test]
    fn values_parse_from_strings_and_from_toml() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size(" 65541 "), Ok(65541));
        assert!(parse_size("16MB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(OptionalDuration::from_strs(&["OFF".into()]), Ok(OptionalDuration(None)));
        assert!(OptionalDuration::from_strs(&["soon".into()]).unwrap_err().contains("or off"));
        let err = Vec::<Algorithm>::from_strs(&["HS256".into()]).unwrap_err();
        assert!(err.contains("shared-secret"), "{err}");
        fn toml(text: &str) -> DeValue<'_> {
            DeValue::parse(text).unwrap().into_inner()
        }
        let base = Path::new("/etc/clerk");
        assert_eq!(Duration::from_toml(&toml("\"5m\""), base), Ok(Duration::from_secs(300)));
        assert_eq!(Duration::from_toml(&toml("7"), base), Ok(Duration::from_secs(7)));
        assert!(Duration::from_toml(&toml("-7"), base).unwrap_err().contains("negative"));
        assert!(bool::from_toml(&toml("\"yes\""), base).unwrap_err().contains("expected a boolean"));
        assert_eq!(PathBuf::from_toml(&toml("\"keys.json\""), base), Ok(PathBuf::from("/etc/clerk/keys.json")));
        assert_eq!(TokenKinds::from_strs(&["machine".into()]), Ok(TokenKinds::SESSION_ONLY.with(TokenKind::Machine)));
        assert_eq!(
            TokenKinds::from_toml(&toml("[\"machine\"]"), base),
            Ok(TokenKinds::empty().with(TokenKind::Machine))
        );
    }
}
