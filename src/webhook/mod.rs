//! Clerk webhooks in: `POST /webhooks/clerk` on `--webhook-listen`.
//!
//! Clerk delivers its webhooks through Svix, at least once, in any order.
//! Each delivery is checked ([`svix`]: the signature against every
//! configured signing secret, then the timestamp), read ([`clerk`]: the
//! events that revoke a session, a user, a membership or an organization),
//! and handed to a [`Record`] (the revocation service), keyed by its
//! `svix-id` so that a retried delivery is applied once.
//!
//! The answers are what Svix expects ([`Outcome`], [`Answer`]): 2xx once the
//! event is recorded (or was already, or revokes nothing); 4xx, which Svix
//! does not retry, for a delivery that is not Clerk's or not an event; 5xx,
//! which Svix retries with backoff for days, when it could not be
//! recorded. Every delivery is counted in `clerk_introspect_webhooks_total`
//! and handled inside a `webhook` span that names its `svix-id`; neither
//! ever holds the body, a signature or a secret.
//!
//! This module is the endpoint's logic ([`Endpoint::deliver`]); the HTTP
//! listener that feeds it (connection cap, timeouts, body cap, routing) is
//! [`crate::server::webhook`].

pub mod clerk;
pub mod svix;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, StatusCode};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::clock::Clock;
use crate::revocation::{Record, RecordError, Recorded};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::throttle::LogThrottle;
use clerk::{EventError, Parsed};
pub use svix::{SecretError, SignatureError, SigningSecret};

/// The path Clerk's webhooks are delivered to.
pub const PATH: &str = "/webhooks/clerk";
/// Longest wait for [`Record::record`]; past it the delivery is answered
/// 503 and Svix retries. Svix gives an endpoint 15 s to answer; the body
/// has had at most `server::webhook::BODY_READ_TIMEOUT` before this.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(8);
/// `event_type` of a delivery whose body was not read (refused before).
pub const UNKNOWN_TYPE: &str = "unknown";

/// What became of one delivery: the `result` metric label and the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded: applied here and appended to the store.
    Applied,
    /// Its `svix-id` was recorded before.
    Duplicate,
    /// A verified event that revokes nothing.
    Ignored,
    /// Headers missing or malformed, or no signature matching a secret.
    BadSignature,
    /// A matching signature, but a timestamp more than 5 minutes away.
    Stale,
    /// Verified, but not a Clerk event this server can read (or the body
    /// did not arrive whole in time).
    Malformed,
    /// Larger than the body cap.
    TooLarge,
    /// Could not be recorded (Svix retries).
    StoreError,
}

impl Outcome {
    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::BadSignature => "bad_signature",
            Outcome::Stale => "stale",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::StoreError => "store_error",
        }
    }
}

/// The answer to one delivery: its status and a one-line text body for
/// whoever reads Svix's delivery log (never a secret, signature or body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// What became of it.
    pub result: Outcome,
    /// One line of text.
    pub text: String,
}

impl Answer {
    fn new(status: StatusCode, result: Outcome, text: impl Into<String>) -> Self {
        let mut text = text.into();
        text.push('\n');
        Self { status, result, text }
    }
}

/// The endpoint's state: the signing secrets (replaced on reload), the body
/// cap, the clock and the metrics.
pub struct Endpoint {
    secrets: ArcSwap<Vec<SigningSecret>>,
    max_body_bytes: usize,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    refused_log: LogThrottle,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("secrets", &self.secrets.load().len())
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint verifying with `secrets`, reading bodies of at most
    /// `max_body_bytes`, checking timestamps against `clock`, counting in
    /// `metrics`.
    pub fn new(
        secrets: Vec<SigningSecret>,
        max_body_bytes: usize,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            secrets: ArcSwap::from_pointee(secrets),
            max_body_bytes,
            clock,
            metrics,
            refused_log: LogThrottle::default(),
        }
    }

    /// Replaces the signing secrets (a reload); deliveries in progress
    /// finish with the old ones.
    pub fn set_secrets(&self, secrets: Vec<SigningSecret>) {
        self.secrets.store(Arc::new(secrets));
    }

    /// How many signing secrets are configured.
    pub fn secret_count(&self) -> usize {
        self.secrets.load().len()
    }

    /// The body cap, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Answers a delivery refused before its body was read whole: larger
    /// than the cap (`too_large: true`), or not sent in time.
    pub fn refuse_body(&self, too_large: bool) -> Answer {
        let answer = if too_large {
            Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Outcome::TooLarge,
                format!("the body is larger than the {} bytes allowed", self.max_body_bytes),
            )
        } else {
            Answer::new(StatusCode::REQUEST_TIMEOUT, Outcome::Malformed, "the body did not arrive in time")
        };
        self.count(UNKNOWN_TYPE, answer.result);
        self.log_refused(None, &answer);
        answer
    }

    /// Verifies, reads and records one delivery whose body is `body`.
    pub async fn deliver(&self, headers: &HeaderMap, body: &[u8], record: &dyn Record) -> Answer {
        // Logged before it is verified: only an id of Svix's alphabet, so a
        // sender cannot write into the log line.
        let id = headers.get("svix-id").or_else(|| headers.get("webhook-id")).and_then(|v| v.to_str().ok());
        let id = id
            .filter(|id| {
                id.len() <= svix::MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .unwrap_or("");
        let span =
            info_span!("webhook", svix_id = id, event_type = tracing::field::Empty, result = tracing::field::Empty);
        async {
            let (event_type, answer) = self.handle(headers, body, record).await;
            let span = tracing::Span::current();
            span.record("event_type", event_type);
            span.record("result", answer.result.as_str());
            self.count(event_type, answer.result);
            match answer.result {
                Outcome::Applied => info!(event_type, "webhook event recorded"),
                Outcome::Duplicate | Outcome::Ignored => {
                    debug!(event_type, result = answer.result.as_str(), "webhook acknowledged")
                }
                Outcome::StoreError => {}
                _ => self.log_refused(Some(event_type), &answer),
            }
            answer
        }
        .instrument(span)
        .await
    }

    async fn handle(&self, headers: &HeaderMap, body: &[u8], record: &dyn Record) -> (&'static str, Answer) {
        if body.len() > self.max_body_bytes {
            return (UNKNOWN_TYPE, self.refuse_body(true));
        }
        let secrets = self.secrets.load();
        let verified = match svix::verify(&secrets, headers, body, self.clock.unix_seconds()) {
            Ok(v) => v,
            Err(e) => {
                let (status, result) = match e {
                    e if e.is_malformed() => (StatusCode::BAD_REQUEST, Outcome::BadSignature),
                    e if e.is_stale() => (StatusCode::UNAUTHORIZED, Outcome::Stale),
                    _ => (StatusCode::UNAUTHORIZED, Outcome::BadSignature),
                };
                return (UNKNOWN_TYPE, Answer::new(status, result, e.to_string()));
            }
        };
        let event = match clerk::parse(body, &verified.id, verified.timestamp) {
            Ok(Parsed::Revoke(event)) => event,
            Ok(Parsed::Ignored(event_type)) => {
                let label = clerk::type_label(&event_type);
                return (
                    label,
                    Answer::new(StatusCode::OK, Outcome::Ignored, format!("ignored: {label} revokes nothing")),
                );
            }
            Err(e) => {
                let label = match &e {
                    EventError::MissingField { event_type, .. } => event_type,
                    _ => UNKNOWN_TYPE,
                };
                return (label, Answer::new(StatusCode::BAD_REQUEST, Outcome::Malformed, e.to_string()));
            }
        };
        let label = event_label(&event);
        match tokio::time::timeout(RECORD_TIMEOUT, record.record(event)).await {
            Ok(Ok(Recorded::Applied)) => {
                (label, Answer::new(StatusCode::OK, Outcome::Applied, format!("applied: {label}")))
            }
            Ok(Ok(Recorded::Duplicate)) => {
                (label, Answer::new(StatusCode::OK, Outcome::Duplicate, format!("duplicate: {label} already recorded")))
            }
            Ok(Err(e @ RecordError::Invalid(_))) => {
                // The event itself cannot be kept (an id no index accepts):
                // a retry would fail the same way, so no 5xx.
                (label, Answer::new(StatusCode::BAD_REQUEST, Outcome::Malformed, e.to_string()))
            }
            Ok(Err(e)) => {
                // The details (the store's own words) go to the log, not to
                // the internet.
                warn!(event_type = label, error = %crate::error_chain(&e), "webhook event not recorded; Svix will retry");
                (label, Answer::new(StatusCode::SERVICE_UNAVAILABLE, Outcome::StoreError, "not recorded, retry later"))
            }
            Err(_) => {
                warn!(event_type = label, timeout = ?RECORD_TIMEOUT, "webhook event not recorded in time; Svix will retry");
                (
                    label,
                    Answer::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Outcome::StoreError,
                        format!("not recorded within {} s, retry later", RECORD_TIMEOUT.as_secs()),
                    ),
                )
            }
        }
    }

    fn count(&self, event_type: &'static str, result: Outcome) {
        self.metrics.webhook_delivered(event_type, result.as_str());
    }

    /// Refused deliveries come from anyone who can reach the port: logged
    /// at most once per interval.
    fn log_refused(&self, event_type: Option<&'static str>, answer: &Answer) {
        if let Some(unlogged) = self.refused_log.admit() {
            warn!(
                event_type = event_type.unwrap_or(UNKNOWN_TYPE),
                result = answer.result.as_str(),
                status = answer.status.as_u16(),
                unlogged,
                "webhook delivery refused: {}",
                answer.text.trim_end()
            );
        }
    }
}

/// The `event_type` label of a revoking event (its Clerk type).
fn event_label(event: &crate::revocation::RevocationEvent) -> &'static str {
    use crate::revocation::Cause;
    match event.cause {
        Cause::SessionRevoked => "session.revoked",
        Cause::SessionEnded => "session.ended",
        Cause::SessionRemoved => "session.removed",
        Cause::UserDeleted => "user.deleted",
        Cause::UserBanned | Cause::UserLocked => "user.updated",
        Cause::MembershipRemoved => "organizationMembership.deleted",
        Cause::OrganizationDeleted => "organization.deleted",
        Cause::Operator => clerk::OTHER_TYPE,
    }
}
