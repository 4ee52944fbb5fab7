//! `clerk-introspect revoke`: an operator revokes a session, a user, a
//! membership or an organization by hand (an incident, without the Clerk
//! dashboard). The event is appended to the shared revocation store, from
//! which every replica applies it, exactly like a Clerk webhook's; there is
//! no endpoint to call, so nothing unauthenticated is exposed. Without a
//! store there is no way to reach the replicas, and the command says so.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::config::settings::parse_duration;
use crate::revocation::index::check_event;
use crate::revocation::store::Store;
use crate::revocation::store::redis::{RedisStore, STREAM_KEY};
use crate::revocation::{Cause, Revocation, RevocationEvent};

/// Exit code: appended.
pub const EXIT_OK: u8 = 0;
/// Exit code: nothing to revoke, or no store (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code: the store could not be reached (BSD `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Flags of `revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// Revoke every token of this session (its `sid`, `sess_…`), whenever issued.
    #[arg(long, value_name = "SESSION_ID", conflicts_with_all = ["user", "org"])]
    pub session: Option<String>,

    /// Revoke every token of this user (`sub`, `user_…`) issued until now; tokens issued later pass. With --org: only the user's tokens naming that organization (a membership).
    #[arg(long, value_name = "USER_ID")]
    pub user: Option<String>,

    /// With --user: that user's membership of this organization. Alone: every token naming this organization (`org_…`) issued until now.
    #[arg(long, value_name = "ORG_ID")]
    pub org: Option<String>,

    /// The revocation store that serve uses (redis:// or rediss://).
    #[arg(long, env = "INTROSPECT_REVOCATION_STORE", value_name = "URL", hide_env_values = true)]
    pub revocation_store: Option<String>,

    /// A file holding the Redis password, when the URL has none (INTROSPECT_REVOCATION_STORE_PASSWORD gives it from the environment).
    #[arg(long, env = "INTROSPECT_REVOCATION_STORE_PASSWORD_FILE", value_name = "FILE")]
    pub revocation_store_password_file: Option<PathBuf>,

    /// The retention serve uses (the stream is trimmed to it when appending).
    #[arg(long, env = "INTROSPECT_REVOCATION_RETENTION", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub revocation_retention: Duration,
}

/// The password from the environment (never a flag here: the process list
/// would show it).
const PASSWORD_ENV: &str = "INTROSPECT_REVOCATION_STORE_PASSWORD";
/// Largest password file read.
const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// What `revoke` would append: the revocation the flags name.
pub fn revocation(args: &RevokeArgs) -> Result<Revocation, String> {
    let id = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    match (id(&args.session), id(&args.user), id(&args.org)) {
        (Some(sid), None, None) => Ok(Revocation::Session { sid }),
        (None, Some(sub), None) => Ok(Revocation::User { sub }),
        (None, Some(sub), Some(org_id)) => Ok(Revocation::Membership { sub, org_id }),
        (None, None, Some(org_id)) => Ok(Revocation::Organization { org_id }),
        _ => Err(
            "name what to revoke: --session SESSION_ID, --user USER_ID, --user USER_ID --org ORG_ID, or --org ORG_ID"
                .to_owned(),
        ),
    }
}

/// An operator's event for `revocation`, now.
pub fn operator_event(revocation: Revocation) -> RevocationEvent {
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    RevocationEvent {
        id: format!("operator:{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        revocation,
        cause: Cause::Operator,
        at_ms,
    }
}

fn password(args: &RevokeArgs) -> Result<Option<String>, String> {
    if let Some(path) = &args.revocation_store_password_file {
        let text = crate::config::file::read_text(path, MAX_PASSWORD_FILE_BYTES)?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(std::env::var(PASSWORD_ENV).ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()))
}

/// Runs `revoke`; the exit code.
pub async fn run(args: &RevokeArgs) -> u8 {
    let revocation = match revocation(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("clerk-introspect revoke: {e}");
            return EXIT_USAGE;
        }
    };
    let Some(url) = args.revocation_store.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        eprintln!(
            "clerk-introspect revoke: no revocation store: give --revocation-store redis://… (or INTROSPECT_REVOCATION_STORE), the store the replicas use. \
             Without one, revocations live in each replica's memory and there is no way to reach them (serve has no revocation endpoint, on purpose)."
        );
        return EXIT_USAGE;
    };
    let password = match password(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("clerk-introspect revoke: --revocation-store-password-file: {e}");
            return EXIT_USAGE;
        }
    };
    let event = operator_event(revocation);
    if let Err(e) = check_event(&event) {
        eprintln!("clerk-introspect revoke: {e}");
        return EXIT_USAGE;
    }
    let store = match RedisStore::new(url, password.as_deref(), STREAM_KEY, args.revocation_retention) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("clerk-introspect revoke: {e}");
            return EXIT_USAGE;
        }
    };
    match store.append(&event).await {
        Ok(id) => {
            let what = match &event.revocation {
                Revocation::Session { sid } => format!("session {sid}"),
                Revocation::User { sub } => format!("user {sub} (tokens issued until now)"),
                Revocation::Membership { sub, org_id } => {
                    format!("membership of {sub} in {org_id} (tokens issued until now)")
                }
                Revocation::Organization { org_id } => format!("organization {org_id} (tokens issued until now)"),
            };
            println!(
                "revoked {what}: event {} appended to {} at {id}; every replica applies it within a second.\n\
                 This refuses the tokens at clerk-introspect only: also end the session or ban the user in Clerk, or new tokens will be issued.",
                event.id,
                store.describe()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "clerk-introspect revoke: the revocation store ({}) did not take the event: {e}",
                store.describe()
            );
            EXIT_UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(session: Option<&str>, user: Option<&str>, org: Option<&str>) -> RevokeArgs {
        RevokeArgs {
            session: session.map(Into::into),
            user: user.map(Into::into),
            org: org.map(Into::into),
            revocation_store: None,
            revocation_store_password_file: None,
            revocation_retention: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_flags_name_one_revocation() {
        assert_eq!(revocation(&args(Some("sess_1"), None, None)), Ok(Revocation::Session { sid: "sess_1".into() }));
        assert_eq!(revocation(&args(None, Some("user_1"), None)), Ok(Revocation::User { sub: "user_1".into() }));
        assert_eq!(
            revocation(&args(None, Some("user_1"), Some("org_1"))),
            Ok(Revocation::Membership { sub: "user_1".into(), org_id: "org_1".into() })
        );
        assert_eq!(
            revocation(&args(None, None, Some("org_1"))),
            Ok(Revocation::Organization { org_id: "org_1".into() })
        );
        assert!(revocation(&args(None, None, None)).is_err());
        assert!(revocation(&args(None, Some(" "), None)).is_err());
        let e = operator_event(Revocation::User { sub: "user_1".into() });
        assert!(e.id.starts_with("operator:") && e.id.len() == 41 && e.cause == Cause::Operator);
    }
}
