//! Envoy ext_authz answers: the only place that turns a verification
//! outcome into a `CheckResponse` (or the RPC error for unavailable keys).
//!
//! - allowed: status `OK` and an `OkHttpResponse` that *sets* (overwrites)
//!   every identity header it has a value for and removes every other
//!   header this service could set, so no client can supply them;
//! - refused: `UNAUTHENTICATED` + 401 (`error="invalid_token"`) for a missing
//!   or invalid token, `PERMISSION_DENIED` + 403 (`error="insufficient_scope"`)
//!   for a valid token that a policy refuses; a `WWW-Authenticate` header
//!   (RFC 6750), an `x-introspect-reason` header and a JSON body;
//! - keys unavailable: status `UNAVAILABLE` with a 503 denied response, or (by
//!   configuration) the RPC error `UNAVAILABLE`, or a
//!   `CheckResponse` with status `UNAVAILABLE` and a 503 `error_response`.
//!
//! Nothing here ever contains the token.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Code, Status};

use crate::config::authz::{AuthzConfig, IdentityField, UnavailableMode};
use crate::verify::{Reason, Rejection, VerifiedToken, VerifyError};

/// The response header naming the reason of a refusal.
pub const REASON_HEADER: &str = "x-introspect-reason";
/// Longest value put in an identity header; longer values are not sent.
pub const MAX_HEADER_VALUE: usize = 1024;
/// Longest `error_description` (characters) in `WWW-Authenticate`.
pub const MAX_DESCRIPTION: usize = 300;
/// The reason given when keys are unavailable (not a contract reason: no
/// answer about the token was possible).
pub const UNAVAILABLE_REASON: &str = "UNAVAILABLE";

/// The `Check` answer for an outcome.
pub fn check_outcome(
    outcome: Result<&VerifiedToken, &VerifyError>,
    config: &AuthzConfig,
) -> Result<CheckResponse, Status> {
    match outcome {
        Ok(token) => Ok(allowed(token, config)),
        Err(VerifyError::Rejected(r)) => Ok(denied(r)),
        Err(e @ VerifyError::Unavailable { .. }) => unavailable(e, config.unavailable),
    }
}

/// What a refusal for `reason` looks like: HTTP status, gRPC code, and the
/// RFC 6750 error code. A token that verified but fails a policy (azp, aud,
/// role, token kind) is 403; everything else is 401.
pub fn refusal(reason: Reason) -> (HttpStatusCode, Code, &'static str) {
    match reason {
        Reason::AuthorizedPartyMismatch
        | Reason::AudienceMismatch
        | Reason::RoleNotAllowed
        | Reason::MissingRole
        | Reason::TokenTypeNotAccepted => (HttpStatusCode::Forbidden, Code::PermissionDenied, "insufficient_scope"),
        _ => (HttpStatusCode::Unauthorized, Code::Unauthenticated, "invalid_token"),
    }
}

/// Allowed: status OK; identity headers set (overwriting anything the
/// client sent); every other header this service could set removed.
pub fn allowed(token: &VerifiedToken, config: &AuthzConfig) -> CheckResponse {
    let mut ok = OkHttpResponse::default();
    let mut metadata = HashMap::new();
    metadata.insert("reason".to_owned(), string(Reason::Valid.as_str_name()));
    metadata.insert("issuer".to_owned(), string(&token.issuer));
    for (field, header) in &config.identity_headers {
        match identity_value(token, *field).and_then(header_value) {
            Some(value) => {
                ok.headers.push(set_header(header, value));
                metadata.insert(field.name().replace('-', "_"), string(value));
            }
            None => ok.headers_to_remove.push(header.clone()),
        }
    }
    if !config.claim_headers.is_empty() {
        let claims =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&token.payload).unwrap_or_default();
        for (claim, header) in &config.claim_headers {
            match claims.get(claim).and_then(scalar).as_deref().and_then(header_value) {
                Some(value) => ok.headers.push(set_header(header, value)),
                None => ok.headers_to_remove.push(header.clone()),
            }
        }
    }
    CheckResponse {
        status: Some(rpc::Status { code: Code::Ok as i32, message: String::new(), details: Vec::new() }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: Some(Struct { fields: metadata }),
    }
}

/// A CORS preflight let through without a token: allowed, with every
/// header this service could set removed.
pub fn preflight(config: &AuthzConfig) -> CheckResponse {
    let ok = OkHttpResponse {
        headers_to_remove: config.managed_headers().map(str::to_owned).collect(),
        ..Default::default()
    };
    CheckResponse {
        status: Some(rpc::Status { code: Code::Ok as i32, message: String::new(), details: Vec::new() }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: Some(Struct { fields: HashMap::from([("reason".to_owned(), string("CORS_PREFLIGHT"))]) }),
    }
}

/// Refused: 401 or 403 (see [`refusal`]) with `WWW-Authenticate`,
/// `x-introspect-reason` and a JSON body `{"reason", "message"}`.
pub fn denied(rejection: &Rejection) -> CheckResponse {
    let (http, code, error) = refusal(rejection.reason);
    let reason = rejection.reason_name();
    let response = DeniedHttpResponse {
        status: Some(HttpStatus { code: http as i32 }),
        headers: vec![
            set_header("www-authenticate", &www_authenticate(error, &rejection.message)),
            set_header(REASON_HEADER, reason),
            set_header("content-type", "application/json"),
            set_header("cache-control", "no-store"),
        ],
        body: json_body(reason, &rejection.message),
    };
    CheckResponse {
        status: Some(rpc::Status { code: code as i32, message: rejection.to_string(), details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(response)),
        dynamic_metadata: Some(Struct { fields: HashMap::from([("reason".to_owned(), string(reason))]) }),
    }
}

/// Keys unavailable: no answer about the token is possible.
///
/// [`UnavailableMode::DeniedResponse`] (the default) answers with status
/// `UNAVAILABLE` and a 503 `denied_response`: Envoy sends our 503 and body
/// (every version); being a denial, it fails closed whatever
/// `failure_mode_allow` says. [`UnavailableMode::GrpcError`] fails the RPC
/// with `UNAVAILABLE`: Envoy (every version) counts an authorization
/// failure, lets the request through if `failure_mode_allow` is set, and
/// otherwise answers with `status_on_error`.
/// [`UnavailableMode::ErrorResponse`] answers with status `UNAVAILABLE` and a
/// 503 `error_response`, which Envoy 1.37+ treats as a failure (but sends our
/// 503 and body); older Envoy ignores the field and denies with 403.
pub fn unavailable(error: &VerifyError, mode: UnavailableMode) -> Result<CheckResponse, Status> {
    let status = super::unavailable(error);
    let response = || DeniedHttpResponse {
        status: Some(HttpStatus { code: HttpStatusCode::ServiceUnavailable as i32 }),
        headers: vec![
            set_header(REASON_HEADER, UNAVAILABLE_REASON),
            set_header("content-type", "application/json"),
            set_header("cache-control", "no-store"),
            set_header("retry-after", "5"),
        ],
        body: json_body(UNAVAILABLE_REASON, status.message()),
    };
    let http_response = match mode {
        UnavailableMode::GrpcError => return Err(status),
        UnavailableMode::DeniedResponse => HttpResponse::DeniedResponse(response()),
        UnavailableMode::ErrorResponse => HttpResponse::ErrorResponse(response()),
    };
    Ok(CheckResponse {
        status: Some(rpc::Status {
            code: Code::Unavailable as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(http_response),
        dynamic_metadata: Some(Struct { fields: HashMap::from([("reason".to_owned(), string(UNAVAILABLE_REASON))]) }),
    })
}

/// `Bearer error="<error>", error_description="<description>"`. RFC 6750
/// §3 allows only printable ASCII other than `"` and `\` in the
/// description, so `"` becomes `'`, `\` becomes `/`, anything else outside
/// that set (control characters, non-ASCII) is dropped, and the description
/// is cut to [`MAX_DESCRIPTION`] characters.
pub fn www_authenticate(error: &str, description: &str) -> String {
    let mut clean = String::with_capacity(description.len().min(MAX_DESCRIPTION));
    let mut count = 0;
    for c in description.chars() {
        let c = match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => continue,
        };
        if count == MAX_DESCRIPTION - 3 {
            clean.push_str("...");
            break;
        }
        clean.push(c);
        count += 1;
    }
    format!("Bearer error=\"{error}\", error_description=\"{clean}\"")
}

/// `{"reason": "...", "message": "..."}`.
pub fn json_body(reason: &str, message: &str) -> String {
    serde_json::json!({ "reason": reason, "message": message }).to_string()
}

/// A header that replaces any value of the same name (Envoy applies
/// `OVERWRITE_IF_EXISTS_OR_ADD`; the deprecated `append` stays unset, which
/// older Envoy versions also read as "replace").
fn set_header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value: value.to_owned(), raw_value: Vec::new() }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// The value of an identity field, if the token has it.
fn identity_value(token: &VerifiedToken, field: IdentityField) -> Option<&str> {
    let c = &token.claims;
    match field {
        IdentityField::UserId => c.sub.get().map(String::as_str),
        IdentityField::SessionId => c.sid.as_deref(),
        IdentityField::OrgId => c.org.id.as_deref(),
        IdentityField::OrgRole => c.org.role.as_deref(),
        IdentityField::OrgSlug => c.org.slug.as_deref(),
        IdentityField::Role => c.role.get().map(String::as_str),
        IdentityField::AuthorizedParty => c.azp.get().map(String::as_str),
        IdentityField::Issuer => Some(&token.issuer),
    }
}

/// A claim as header text: strings, numbers and booleans only.
fn scalar(value: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        serde_json::Value::String(s) => Some(s.as_str().into()),
        serde_json::Value::Number(n) => Some(n.to_string().into()),
        serde_json::Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

/// A value fit for a header: non-empty, at most [`MAX_HEADER_VALUE`] bytes,
/// no control characters.
fn header_value(value: &str) -> Option<&str> {
    let fits = !value.is_empty() && value.len() <= MAX_HEADER_VALUE && !value.chars().any(char::is_control);
    fits.then_some(value)
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_authenticate_is_rfc6750_clean() {
        let h = www_authenticate("invalid_token", "The token's issuer \"x\\y\" is\r\n bad\u{7f} — café.");
        assert_eq!(h, "Bearer error=\"invalid_token\", error_description=\"The token's issuer 'x/y' is bad  caf.\"");
        let inside = h.strip_prefix("Bearer error=\"invalid_token\", error_description=\"").unwrap();
        let inside = inside.strip_suffix('"').unwrap();
        assert!(inside.chars().all(|c| matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')), "{inside}");
    }

    #[test]
    fn www_authenticate_is_bounded() {
        let h = www_authenticate("invalid_token", &"a".repeat(10_000));
        let description = h.split("error_description=\"").nth(1).unwrap().trim_end_matches('"');
        assert_eq!(description.len(), MAX_DESCRIPTION);
        assert!(description.ends_with("..."));
        let exact = "b".repeat(MAX_DESCRIPTION - 3);
        assert!(www_authenticate("invalid_token", &exact).ends_with(&format!("{exact}\"")));
    }

    #[test]
    fn policy_failures_are_403_and_the_rest_401() {
        use Reason::*;
        for r in [AuthorizedPartyMismatch, AudienceMismatch, RoleNotAllowed, MissingRole, TokenTypeNotAccepted] {
            assert_eq!(refusal(r), (HttpStatusCode::Forbidden, Code::PermissionDenied, "insufficient_scope"), "{r:?}");
        }
        for r in [
            Malformed,
            AlgorithmNotAllowed,
            UnknownKey,
            BadSignature,
            Expired,
            NotYetValid,
            UntrustedIssuer,
            MissingClaim,
            SessionRevoked,
            SessionPending,
        ] {
            assert_eq!(refusal(r), (HttpStatusCode::Unauthorized, Code::Unauthenticated, "invalid_token"), "{r:?}");
        }
    }

    #[test]
    fn denial_shape() {
        let r = Rejection::new(Reason::Expired, "The token expired \"1 s\" ago.");
        let response = denied(&r);
        let status = response.status.unwrap();
        assert_eq!(status.code, Code::Unauthenticated as i32);
        assert_eq!(status.message, "REASON_EXPIRED: The token expired \"1 s\" ago.");
        let Some(HttpResponse::DeniedResponse(d)) = response.http_response else { panic!("denied") };
        assert_eq!(d.status.unwrap().code, 401);
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body, serde_json::json!({"reason": "REASON_EXPIRED", "message": "The token expired \"1 s\" ago."}));
        let header = |k: &str| d.headers.iter().find(|h| h.header.as_ref().unwrap().key == k).unwrap();
        assert_eq!(header(REASON_HEADER).header.as_ref().unwrap().value, "REASON_EXPIRED");
        assert_eq!(header("content-type").header.as_ref().unwrap().value, "application/json");
        assert!(d.headers.iter().all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32));
    }

    #[test]
    fn header_values_are_checked() {
        assert_eq!(header_value("user_1"), Some("user_1"));
        assert_eq!(header_value("Zoë"), Some("Zoë"));
        assert_eq!(header_value(""), None);
        assert_eq!(header_value("a\r\nx-evil: 1"), None);
        assert_eq!(header_value(&"x".repeat(MAX_HEADER_VALUE + 1)), None);
        assert!(header_value(&"x".repeat(MAX_HEADER_VALUE)).is_some());
        assert_eq!(scalar(&serde_json::json!(42)).as_deref(), Some("42"));
        assert_eq!(scalar(&serde_json::json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar(&serde_json::json!({"a": 1})), None);
        assert_eq!(scalar(&serde_json::json!([1])), None);
        assert_eq!(scalar(&serde_json::Value::Null), None);
    }
}
