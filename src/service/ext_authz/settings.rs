//! Flags of the Envoy ext_authz server and the validated settings they
//! produce: where the token is read from, which identity headers an allowed
//! request gets, CORS preflights, and the answer when keys are unavailable.

use clap::{ArgAction, Args, ValueEnum};

use crate::config::ConfigError;

/// The default header the token is read from.
pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
/// Clerk's session cookie (also set as `__session_<suffix>`).
pub const DEFAULT_SESSION_COOKIE: &str = "__session";
/// Longest header or cookie name accepted in configuration.
const MAX_NAME: usize = 128;
/// Most `--authz-claim-header` mappings.
const MAX_CLAIM_HEADERS: usize = 32;

/// Flags of the ext_authz server (part of `serve`).
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[deny(missing_docs)]
pub struct AuthzArgs {
    /// ext_authz: request header that carries the token, as `Bearer <token>` (scheme in any case). In a header other than authorization, a bare token is accepted too.
    #[arg(long = "authz-token-header", env = "INTROSPECT_AUTHZ_TOKEN_HEADER", default_value = DEFAULT_TOKEN_HEADER, value_name = "NAME")]
    pub token_header: String,

    /// ext_authz: cookie read when the header carries no token: Clerk's __session, also in its suffixed form `NAME_<suffix>`.
    #[arg(long = "authz-session-cookie", env = "INTROSPECT_AUTHZ_SESSION_COOKIE", default_value = DEFAULT_SESSION_COOKIE, value_name = "NAME")]
    pub session_cookie: String,

    /// ext_authz: never read a token from cookies (the header only).
    #[arg(long = "authz-no-cookie", env = "INTROSPECT_AUTHZ_NO_COOKIE")]
    pub no_cookie: bool,

    /// ext_authz: identity headers set on allowed requests (repeatable), FIELD or FIELD=HEADER; FIELD is user-id, session-id, org-id, org-role, org-slug, role, authorized-party or issuer. Given at all, it replaces the default set: user-id, session-id, org-id, org-role, role as `x-clerk-<field>`.
    #[arg(
        long = "authz-identity-header",
        env = "INTROSPECT_AUTHZ_IDENTITY_HEADERS",
        value_delimiter = ',',
        value_name = "FIELD[=HEADER]"
    )]
    pub identity_headers: Vec<String>,

    /// ext_authz: also set a header from a top-level claim (repeatable), CLAIM=HEADER. Only strings, numbers and booleans of at most 1 KiB are set; anything else leaves the header removed.
    #[arg(
        long = "authz-claim-header",
        env = "INTROSPECT_AUTHZ_CLAIM_HEADERS",
        value_delimiter = ',',
        value_name = "CLAIM=HEADER"
    )]
    pub claim_headers: Vec<String>,

    /// ext_authz: let CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) through without a token, as Envoy's bypass_cors_preflight does.
    #[arg(
        long = "authz-bypass-cors-preflight",
        env = "INTROSPECT_AUTHZ_BYPASS_CORS_PREFLIGHT",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "BOOL"
    )]
    pub bypass_cors_preflight: bool,

    /// ext_authz: the answer when the token's issuer has no usable keys. denied-response: a CheckResponse with status UNAVAILABLE and a 503 denied response with a JSON body (Envoy sends the 503; a denial, so failure_mode_allow does not apply). grpc-error: the RPC fails with UNAVAILABLE, so Envoy applies failure_mode_allow and status_on_error (any Envoy version). error-response: status UNAVAILABLE and a 503 error_response (Envoy 1.37 or later applies failure_mode_allow; older versions read it as a 403 denial).
    #[arg(
        long = "authz-unavailable",
        env = "INTROSPECT_AUTHZ_UNAVAILABLE",
        default_value = "denied-response",
        value_name = "MODE"
    )]
    pub unavailable: UnavailableMode,
}

impl Default for AuthzArgs {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            token_header: DEFAULT_TOKEN_HEADER.to_owned(),
            session_cookie: DEFAULT_SESSION_COOKIE.to_owned(),
            no_cookie: false,
            identity_headers: Vec::new(),
            claim_headers: Vec::new(),
            bypass_cors_preflight: true,
            unavailable: UnavailableMode::DeniedResponse,
        }
    }
}

/// How `Check` answers when the token's issuer has no usable keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum UnavailableMode {
    /// `CheckResponse{status: UNAVAILABLE, denied_response: 503 + JSON}`:
    /// every Envoy version sends our 503 and body to the client; it is a
    /// denial, so `failure_mode_allow` does not apply (fail closed).
    #[default]
    DeniedResponse,
    /// The RPC fails with `UNAVAILABLE`: Envoy counts a failure and applies
    /// `failure_mode_allow` and `status_on_error` (every Envoy version).
    GrpcError,
    /// `CheckResponse{status: UNAVAILABLE, error_response: 503 + JSON}`:
    /// Envoy 1.37+ counts a failure and applies `failure_mode_allow`, else
    /// sends the 503; older Envoy ignores the field and denies with 403.
    ErrorResponse,
}

/// An identity field that can be sent upstream as a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityField {
    /// `sub`.
    UserId,
    /// `sid`.
    SessionId,
    /// `o.id` / `org_id`.
    OrgId,
    /// `o.rol` / `org_role`.
    OrgRole,
    /// `o.slg` / `org_slug`.
    OrgSlug,
    /// `role` (the Postgres role Supabase uses).
    Role,
    /// `azp`.
    AuthorizedParty,
    /// `iss` (the configured issuer).
    Issuer,
}

impl IdentityField {
    /// Every field, in documentation order.
    pub const ALL: [IdentityField; 8] = [
        IdentityField::UserId,
        IdentityField::SessionId,
        IdentityField::OrgId,
        IdentityField::OrgRole,
        IdentityField::OrgSlug,
        IdentityField::Role,
        IdentityField::AuthorizedParty,
        IdentityField::Issuer,
    ];

    /// The fields sent by default.
    pub const DEFAULTS: [IdentityField; 5] = [
        IdentityField::UserId,
        IdentityField::SessionId,
        IdentityField::OrgId,
        IdentityField::OrgRole,
        IdentityField::Role,
    ];

    /// The name used in `--authz-identity-header`.
    pub fn name(self) -> &'static str {
        match self {
            IdentityField::UserId => "user-id",
            IdentityField::SessionId => "session-id",
            IdentityField::OrgId => "org-id",
            IdentityField::OrgRole => "org-role",
            IdentityField::OrgSlug => "org-slug",
            IdentityField::Role => "role",
            IdentityField::AuthorizedParty => "authorized-party",
            IdentityField::Issuer => "issuer",
        }
    }

    /// The header it goes in unless configured otherwise: `x-clerk-<name>`.
    pub fn default_header(self) -> String {
        format!("x-clerk-{}", self.name())
    }

    fn parse(name: &str) -> Option<IdentityField> {
        IdentityField::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

/// The validated settings of the ext_authz server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzConfig {
    /// Header the token is read from (lower case).
    pub token_header: String,
    /// Cookie the token is read from when the header has none; `None`: never.
    pub session_cookie: Option<String>,
    /// Identity fields and the headers they go in (lower case, distinct).
    pub identity_headers: Vec<(IdentityField, String)>,
    /// Top-level claims and the headers they go in (lower case, distinct).
    pub claim_headers: Vec<(String, String)>,
    /// Let CORS preflights through without a token.
    pub bypass_cors_preflight: bool,
    /// The answer when keys are unavailable.
    pub unavailable: UnavailableMode,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self::from_args(&AuthzArgs::default()).expect("the default ext_authz flags are valid")
    }
}

impl AuthzConfig {
    /// Validates the flags: header and cookie names are tokens, identity
    /// headers are distinct and never a header that carries credentials or
    /// that a proxy owns.
    pub fn from_args(args: &AuthzArgs) -> Result<AuthzConfig, ConfigError> {
        let token_header = header_name("--authz-token-header", &args.token_header)?;
        if matches!(token_header.as_str(), "cookie" | "host" | "content-length" | "content-type") {
            return Err(ConfigError::new(
                "--authz-token-header",
                format!("{token_header} cannot carry a token; use authorization (the default) or a custom header"),
            ));
        }
        let session_cookie =
            if args.no_cookie { None } else { Some(cookie_name("--authz-session-cookie", &args.session_cookie)?) };

        let mut identity_headers = Vec::new();
        if args.identity_headers.is_empty() {
            identity_headers.extend(IdentityField::DEFAULTS.map(|f| (f, f.default_header())));
        }
        for raw in &args.identity_headers {
            let flag = "--authz-identity-header";
            let (field, header) = match raw.split_once('=') {
                Some((field, header)) => (field.trim(), Some(header)),
                None => (raw.trim(), None),
            };
            let field = IdentityField::parse(field).ok_or_else(|| {
                let known: Vec<_> = IdentityField::ALL.iter().map(|f| f.name()).collect();
                ConfigError::new(flag, format!("unknown field {field:?}; use one of {}", known.join(", ")))
            })?;
            if identity_headers.iter().any(|(f, _)| *f == field) {
                return Err(ConfigError::new(flag, format!("{} is given twice; list each field once", field.name())));
            }
            let header = match header {
                Some(h) => header_name(flag, h)?,
                None => field.default_header(),
            };
            identity_headers.push((field, header));
        }

        let mut claim_headers = Vec::new();
        for raw in &args.claim_headers {
            let flag = "--authz-claim-header";
            let (claim, header) = raw.split_once('=').ok_or_else(|| {
                ConfigError::new(flag, format!("{raw:?} is not CLAIM=HEADER, e.g. email=x-user-email"))
            })?;
            let claim = claim.trim();
            if claim.is_empty() || claim.len() > MAX_NAME || claim.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    flag,
                    format!("{claim:?} is not a claim name (1 to {MAX_NAME} characters)"),
                ));
            }
            claim_headers.push((claim.to_owned(), header_name(flag, header)?));
        }
        if claim_headers.len() > MAX_CLAIM_HEADERS {
            return Err(ConfigError::new("--authz-claim-header", format!("at most {MAX_CLAIM_HEADERS} mappings")));
        }

        let all = identity_headers.iter().map(|(_, h)| ("--authz-identity-header", h));
        let all = all.chain(claim_headers.iter().map(|(_, h)| ("--authz-claim-header", h)));
        let mut seen: Vec<&str> = Vec::new();
        for (flag, header) in all {
            if *header == token_header {
                return Err(ConfigError::new(
                    flag,
                    format!("{header} is the header the token is read from; it goes upstream untouched"),
                ));
            }
            if seen.contains(&header.as_str()) {
                return Err(ConfigError::new(
                    flag,
                    format!("the header {header} is set twice; give each its own name"),
                ));
            }
            reserved(flag, header)?;
            seen.push(header);
        }

        Ok(AuthzConfig {
            token_header,
            session_cookie,
            identity_headers,
            claim_headers,
            bypass_cors_preflight: args.bypass_cors_preflight,
            unavailable: args.unavailable,
        })
    }

    /// Every header this service may set on a request. Those not set on an
    /// allowed request are removed, so a client can never supply them.
    pub fn managed_headers(&self) -> impl Iterator<Item = &str> {
        self.identity_headers.iter().map(|(_, h)| h.as_str()).chain(self.claim_headers.iter().map(|(_, h)| h.as_str()))
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A header name: an RFC 9110 token, lower-cased as Envoy sends it.
fn header_name(flag: &str, raw: &str) -> Result<String, ConfigError> {
    let name = raw.trim().to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(is_tchar) {
        return Err(ConfigError::new(
            flag,
            format!("{raw:?} is not a header name (1 to {MAX_NAME} letters, digits or !#$%&'*+-.^_`|~)"),
        ));
    }
    Ok(name)
}

/// A cookie name: an RFC 6265 token.
fn cookie_name(flag: &str, raw: &str) -> Result<String, ConfigError> {
    let name = raw.trim();
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(is_tchar) {
        return Err(ConfigError::new(flag, format!("{raw:?} is not a cookie name (1 to {MAX_NAME} token characters)")));
    }
    Ok(name.to_owned())
}

/// Headers that carry credentials, frame the message, or belong to the proxy.
fn reserved(flag: &str, header: &str) -> Result<(), ConfigError> {
    const RESERVED: &[&str] = &[
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "x-request-id",
        "x-introspect-reason",
    ];
    if RESERVED.contains(&header) || header.starts_with("x-envoy-") || header.starts_with("x-forwarded-") {
        return Err(ConfigError::new(
            flag,
            format!(
                "{header} cannot be an identity header: it carries credentials, frames the request or belongs to the proxy"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut AuthzArgs)) -> AuthzArgs {
        let mut a = AuthzArgs::default();
        f(&mut a);
        a
    }

    fn serve(extra: &[&str]) -> crate::config::ServeArgs {
        use clap::Parser;
        let mut argv = vec!["clerk-introspect", "serve", "--issuer", "https://clerk.example.com"];
        argv.extend_from_slice(extra);
        match crate::config::Cli::try_parse_from(argv).unwrap().command {
            crate::config::Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_match_the_flags() {
        assert_eq!(serve(&[]).authz, AuthzArgs::default());
        let config = crate::config::Config::from_args(&serve(&[])).unwrap();
        assert_eq!(config.authz, AuthzConfig::default());
    }

    #[test]
    fn flags_reach_the_config() {
        let args = serve(&[
            "--authz-token-header",
            "X-Clerk-Token",
            "--authz-session-cookie",
            "session",
            "--authz-identity-header",
            "user-id",
            "--authz-identity-header",
            "org-id=x-tenant",
            "--authz-claim-header",
            "email=x-user-email",
            "--authz-bypass-cors-preflight",
            "false",
            "--authz-unavailable",
            "error-response",
        ]);
        let c = crate::config::Config::from_args(&args).unwrap().authz;
        assert_eq!(c.token_header, "x-clerk-token");
        assert_eq!(c.session_cookie.as_deref(), Some("session"));
        assert_eq!(c.managed_headers().collect::<Vec<_>>(), ["x-clerk-user-id", "x-tenant", "x-user-email"]);
        assert!(!c.bypass_cors_preflight);
        assert_eq!(c.unavailable, UnavailableMode::ErrorResponse);
        assert_eq!(
            crate::config::Config::from_args(&serve(&["--authz-no-cookie"])).unwrap().authz.session_cookie,
            None
        );
        let bad = crate::config::Config::from_args(&serve(&["--authz-identity-header", "user-id=host"])).unwrap_err();
        assert_eq!(bad.flag, "--authz-identity-header");
    }

    #[test]
    fn defaults() {
        let c = AuthzConfig::default();
        assert_eq!(c.token_header, "authorization");
        assert_eq!(c.session_cookie.as_deref(), Some("__session"));
        let headers: Vec<_> = c.managed_headers().collect();
        assert_eq!(
            headers,
            ["x-clerk-user-id", "x-clerk-session-id", "x-clerk-org-id", "x-clerk-org-role", "x-clerk-role"]
        );
        assert!(c.bypass_cors_preflight);
        assert_eq!(c.unavailable, UnavailableMode::DeniedResponse);
    }

    #[test]
    fn identity_headers_replace_the_defaults_and_claims_add() {
        let c = AuthzConfig::from_args(&args(|a| {
            a.identity_headers = vec!["user-id".into(), "Org-Id=X-Tenant".into()];
            a.claim_headers = vec!["email=x-user-email".into()];
            a.token_header = "X-Clerk-Token".into();
            a.no_cookie = true;
        }))
        .unwrap();
        assert_eq!(
            c.identity_headers,
            vec![(IdentityField::UserId, "x-clerk-user-id".into()), (IdentityField::OrgId, "x-tenant".into())]
        );
        assert_eq!(c.claim_headers, vec![("email".to_owned(), "x-user-email".to_owned())]);
        assert_eq!(c.token_header, "x-clerk-token");
        assert_eq!(c.session_cookie, None);
        assert_eq!(c.managed_headers().count(), 3);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let cases: Vec<(AuthzArgs, &str)> = vec![
            (args(|a| a.token_header = "".into()), "--authz-token-header"),
            (args(|a| a.token_header = "x bad".into()), "--authz-token-header"),
            (args(|a| a.token_header = "cookie".into()), "--authz-token-header"),
            (args(|a| a.session_cookie = "a;b".into()), "--authz-session-cookie"),
            (args(|a| a.identity_headers = vec!["nickname".into()]), "--authz-identity-header"),
            (args(|a| a.identity_headers = vec!["user-id".into(), "user-id=x-a".into()]), "--authz-identity-header"),
            (args(|a| a.identity_headers = vec!["user-id=authorization".into()]), "--authz-identity-header"),
            (args(|a| a.identity_headers = vec!["user-id=:path".into()]), "--authz-identity-header"),
            (args(|a| a.identity_headers = vec!["user-id=x-envoy-original-path".into()]), "--authz-identity-header"),
            (args(|a| a.identity_headers = vec!["user-id=x-a".into(), "role=X-A".into()]), "--authz-identity-header"),
            (args(|a| a.claim_headers = vec!["email".into()]), "--authz-claim-header"),
            (args(|a| a.claim_headers = vec!["=x-a".into()]), "--authz-claim-header"),
            (args(|a| a.claim_headers = vec!["email=x-clerk-user-id".into()]), "--authz-claim-header"),
            (args(|a| a.claim_headers = vec!["email=host".into()]), "--authz-claim-header"),
            (
                args(|a| {
                    a.token_header = "x-token".into();
                    a.claim_headers = vec!["email=x-token".into()];
                }),
                "--authz-claim-header",
            ),
        ];
        for (a, flag) in cases {
            let err = AuthzConfig::from_args(&a).unwrap_err();
            assert_eq!(err.flag, flag, "{a:?}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }
}
