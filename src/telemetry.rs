//! Logs and spans: `tracing` to stderr, levels from `RUST_LOG`. Nothing
//! recorded here ever contains a token or a signature.

use tracing::Span;
use tracing_subscriber::EnvFilter;

use crate::verify::{VerifiedToken, VerifyError};

/// Installs the global subscriber: human-readable lines on stderr, filtered
/// by `RUST_LOG` (default: `default_level`, e.g. `info`).
pub fn init_logging(default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Records a verification outcome on the current span (issuer, reason) and
/// as a debug event (with kid and algorithm for valid tokens).
pub fn record_outcome(outcome: Result<&VerifiedToken, &VerifyError>) {
    let span = Span::current();
    match outcome {
        Ok(t) => {
            span.record("issuer", &*t.issuer);
            span.record("reason", "REASON_VALID");
            tracing::debug!(issuer = %t.issuer, kid = t.key.kid().unwrap_or(""), alg = t.algorithm.as_str(), "token valid");
        }
        Err(VerifyError::Rejected(r)) => {
            span.record("reason", r.reason_name());
            tracing::debug!(reason = r.reason_name(), message = %r.message, "token rejected");
        }
        Err(VerifyError::Unavailable { issuer }) => {
            span.record("issuer", &**issuer);
            span.record("reason", "UNAVAILABLE");
            tracing::warn!(issuer = %issuer, "verification unavailable: the issuer has no usable keys");
        }
    }
}
