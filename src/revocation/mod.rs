//! Revocation: what a token alone cannot say (RFC 7662's `active: false`).
//!
//! Clerk ends a session, deletes or bans a user, or removes an organization
//! membership; its webhook (Svix-signed, see `webhook`) or an operator's
//! `revoke` command turns that into one [`RevocationEvent`]. The event is
//! recorded through a [`Record`] implementation: applied to this replica's
//! index at once and appended to the shared store (Redis Streams), from which
//! every other replica applies it. Every Verify and ext_authz check, cache hits
//! included, asks the index whether the token's `sid`, `sub` (by `iat`) or
//! organization (by `iat`) is revoked; a revoked token is refused with
//! `REASON_SESSION_REVOKED`.
//!
//! This module holds the data that crosses those boundaries; the index, the
//! store and the webhook endpoint build on it:
//!
//! - [`index`]: what this replica refuses (lock-free reads, bounded, swept
//!   after the retention), asked by [`crate::verify::Verifier`];
//! - [`store`]: the [`store::Store`] trait (append, read from a position)
//!   and its implementations, in-process and Redis Streams;
//! - [`service`]: [`service::RevocationService`], which implements
//!   [`Record`], follows the store, sweeps, and tells readiness.

pub mod index;
pub mod service;
pub mod store;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// What one revocation refuses.
///
/// Ids are Clerk's (`sess_…`, `user_…`, `org_…`), unique across instances, so
/// an entry needs no issuer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// Every token whose `sid` is this session, whenever it was issued.
    Session {
        /// The session id (`sid`).
        sid: String,
    },
    /// Every token of this user (`sub`) issued (`iat`) before the event;
    /// tokens issued later (after an unban) pass.
    User {
        /// The user id (`sub`).
        sub: String,
    },
    /// Every token of this user whose organization claim (v1 `org_id`, v2
    /// `o.id`) names this organization, issued before the event.
    Membership {
        /// The user id (`sub`).
        sub: String,
        /// The organization id.
        org_id: String,
    },
    /// Every token whose organization claim names this organization, issued
    /// before the event.
    Organization {
        /// The organization id.
        org_id: String,
    },
}

/// Why a revocation exists: the Clerk event (or the operator) behind it, for
/// the refusal's sentence, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// `session.revoked`.
    SessionRevoked,
    /// `session.ended`.
    SessionEnded,
    /// `session.removed`.
    SessionRemoved,
    /// `user.deleted`.
    UserDeleted,
    /// `user.updated` with `banned: true`.
    UserBanned,
    /// `user.updated` with `locked: true`.
    UserLocked,
    /// `organizationMembership.deleted`.
    MembershipRemoved,
    /// `organization.deleted`.
    OrganizationDeleted,
    /// `clerk-introspect revoke`, by an operator.
    Operator,
}

/// One accepted revocation, as recorded, stored and replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// Deduplication key: the delivery's `svix-id` for a webhook (Svix
    /// delivers at least once; each id is applied once), `operator:<random>`
    /// for the `revoke` command.
    pub id: String,
    /// What it refuses.
    pub revocation: Revocation,
    /// Why.
    pub cause: Cause,
    /// When the event happened, Unix milliseconds (Clerk's event `timestamp`;
    /// the operator's clock for `revoke`). Tokens of a user or organization
    /// are refused when issued (`iat`) at or before it.
    pub at_ms: u64,
}

/// What [`Record::record`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Applied on this replica and durably appended to the store.
    Applied,
    /// Its id was seen before: nothing changed (still a success for Svix).
    Duplicate,
}

/// Why an event could not be recorded durably. The webhook answers 5xx so
/// that Svix retries; the event is still applied on this replica.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The store could not append it (Redis down, timeout).
    #[error("the revocation store could not record the event: {0}")]
    Store(String),
    /// The index is full and the event could not be kept.
    #[error("the revocation index is full ({0} entries)")]
    Full(usize),
    /// The event itself cannot be recorded (an empty id, or one longer than
    /// [`index::MAX_ID_BYTES`]): a 4xx for the webhook, no retry.
    #[error("the event cannot be recorded: {0}")]
    Invalid(String),
}

/// Where accepted events go: the webhook endpoint and the `revoke` admin
/// path call this; the revocation service implements it.
pub trait Record: Send + Sync + 'static {
    /// Apply `event` on this replica and append it to the store, once per id.
    fn record(
        &self,
        event: RevocationEvent,
    ) -> Pin<Box<dyn Future<Output = Result<Recorded, RecordError>> + Send + '_>>;
}
