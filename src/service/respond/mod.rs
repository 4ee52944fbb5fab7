//! Turning verification outcomes into wire answers: the only place that
//! builds a `VerifyResponse`, a `GetClaimsResponse` or an error `Status`
//! from a verification. [`check`] does the same for Envoy's `CheckResponse`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pb;
use crate::verify::{Rejection, VerifiedToken, VerifyError};

pub mod check;
pub mod wire;

pub use wire::VerifyAnswer;

/// The message of every valid answer.
pub const VALID_MESSAGE: &str = "The token is valid.";

/// The `Identity` of a verified token (its fields as
/// `wire::IdentityView` reads them, the one place that maps claims to
/// fields).
pub fn identity(token: &VerifiedToken) -> pb::Identity {
    let view = wire::IdentityView::of(token);
    let [subject, issuer, session_id, role, authorized_party, organization_id, organization_role, organization_slug] =
        view.head.map(str::to_owned);
    let [issued_at, expires_at] = view.times.map(|t| t.map(timestamp));
    let [key_id, algorithm] = view.tail.map(str::to_owned);
    pb::Identity {
        subject,
        issuer,
        session_id,
        role,
        authorized_party,
        organization_id,
        organization_role,
        organization_slug,
        issued_at,
        expires_at,
        key_id,
        algorithm,
    }
}

fn timestamp(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// A valid `VerifyResponse`.
pub fn valid(token: &VerifiedToken) -> pb::VerifyResponse {
    pb::VerifyResponse {
        valid: true,
        reason: pb::Reason::Valid as i32,
        message: VALID_MESSAGE.to_owned(),
        identity: Some(identity(token)),
    }
}

/// An invalid `VerifyResponse`: reason and sentence, never an identity.
pub fn rejected(rejection: &Rejection) -> pb::VerifyResponse {
    pb::VerifyResponse {
        valid: false,
        reason: rejection.reason as i32,
        message: rejection.message.to_string(),
        identity: None,
    }
}

/// The `Verify` answer for an outcome (a response, or UNAVAILABLE), for
/// the Verify route ([`crate::service::introspect::VerifyCodec`]): a valid token is encoded
/// straight from the token, without a `VerifyResponse`.
pub fn verify_answer(outcome: Result<Arc<VerifiedToken>, VerifyError>) -> Result<VerifyAnswer, Status> {
    match outcome {
        Ok(token) => Ok(VerifyAnswer::Valid(token)),
        Err(VerifyError::Rejected(r)) => Ok(VerifyAnswer::Message(Box::new(rejected(&r)))),
        Err(e @ VerifyError::Unavailable { .. }) => Err(unavailable(&e)),
    }
}

/// The `GetClaims` answer for an outcome.
pub fn get_claims_outcome(outcome: Result<&VerifiedToken, &VerifyError>) -> Result<pb::GetClaimsResponse, Status> {
    match outcome {
        Ok(token) => Ok(pb::GetClaimsResponse {
            identity: Some(identity(token)),
            claims: Some(claims_struct(&token.payload)),
            claims_json: token.payload.to_string(),
        }),
        Err(VerifyError::Rejected(r)) => Err(unauthenticated(r)),
        Err(e @ VerifyError::Unavailable { .. }) => Err(unavailable(e)),
    }
}

/// `UNAUTHENTICATED` with `REASON_X: sentence` and a `google.rpc.ErrorInfo`
/// whose reason is `REASON_X` (domain `introspect.v1`).
pub fn unauthenticated(rejection: &Rejection) -> Status {
    let details =
        ErrorDetails::with_error_info(rejection.reason_name(), pb::ERROR_DOMAIN, HashMap::<String, String>::new());
    Status::with_error_details(Code::Unauthenticated, rejection.to_string(), details)
}

/// `UNAVAILABLE`: the issuer is trusted but has no usable keys.
pub fn unavailable(error: &VerifyError) -> Status {
    let message = match error {
        VerifyError::Unavailable { issuer } => format!(
            "The keys of issuer {issuer} are not available (not loaded yet, or not refreshed within the allowed staleness); retry shortly."
        ),
        VerifyError::Rejected(r) => r.to_string(),
    };
    Status::unavailable(message)
}

/// The payload as a `google.protobuf.Struct`.
pub fn claims_struct(payload: &str) -> Struct {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(map)) => object(map),
        _ => Struct::default(),
    }
}

fn object(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: map.into_iter().map(|(k, v)| (k, value(v))).collect() }
}

fn value(v: serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.into_iter().map(value).collect() }),
        serde_json::Value::Object(o) => Kind::StructValue(object(o)),
    };
    Value { kind: Some(kind) }
}

/// A `Timestamp` as `SystemTime` (for tests and clients).
pub fn to_system_time(ts: &Timestamp) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(ts.seconds).unwrap_or(0))
}
