//! The Envoy ext_authz server's settings ([`AuthzSettings`], as given)
//! and the validated [`AuthzConfig`]: where the token is read from, which
//! identity headers an allowed request gets, CORS preflights, and the
//! answer when keys are unavailable. They come from flags and environment
//! only (the `authz_*` rows of [`super::settings`]); their rules are in
//! [`super::validate()`].

/// The default header the token is read from.
pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
/// Clerk's session cookie (also set as `__session_<suffix>`).
pub const DEFAULT_SESSION_COOKIE: &str = "__session";
/// Longest header or cookie name accepted in configuration.
pub const MAX_NAME: usize = 128;
/// Most `--authz-claim-header` mappings.
pub const MAX_CLAIM_HEADERS: usize = 32;

/// The ext_authz settings as given (flags, environment, defaults), before
/// validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzSettings {
    /// Request header that carries the token.
    pub token_header: String,
    /// Cookie read when the header carries no token.
    pub session_cookie: String,
    /// Never read cookies.
    pub no_cookie: bool,
    /// `FIELD[=HEADER]` identity headers; empty: the default set.
    pub identity_headers: Vec<String>,
    /// `CLAIM=HEADER` claim headers.
    pub claim_headers: Vec<String>,
    /// Let CORS preflights through without a token.
    pub bypass_cors_preflight: bool,
    /// The answer when keys are unavailable.
    pub unavailable: UnavailableMode,
}

impl Default for AuthzSettings {
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

impl std::str::FromStr for UnavailableMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "denied-response" => Ok(UnavailableMode::DeniedResponse),
            "grpc-error" => Ok(UnavailableMode::GrpcError),
            "error-response" => Ok(UnavailableMode::ErrorResponse),
            other => {
                Err(format!("invalid value {other:?}; use denied-response (the default), grpc-error or error-response"))
            }
        }
    }
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

    /// The field named `name` (any case).
    pub fn parse(name: &str) -> Option<IdentityField> {
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

impl AuthzConfig {
    /// Every header this service may set on a request. Those not set on an
    /// allowed request are removed, so a client can never supply them.
    pub fn managed_headers(&self) -> impl Iterator<Item = &str> {
        self.identity_headers.iter().map(|(_, h)| h.as_str()).chain(self.claim_headers.iter().map(|(_, h)| h.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut AuthzSettings)) -> AuthzSettings {
        let mut a = AuthzSettings::default();
        f(&mut a);
        a
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
        let c = AuthzConfig::from_settings(&args(|a| {
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
        let cases: Vec<(AuthzSettings, &str)> = vec![
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
            let err = AuthzConfig::from_settings(&a).unwrap_err();
            assert_eq!(err.flag, flag, "{a:?}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }
}
