//! Clerk's webhook events, read into [`RevocationEvent`]s.
//!
//! Clerk's envelope (its Backend SDK's `WebhookEvent` type):
//! `{"object": "event", "type": "...", "timestamp": <ms>, "instance_id":
//! "...", "event_attributes": {...}, "data": {...}}`. The events that revoke:
//!
//! | type | `data` | revokes |
//! |---|---|---|
//! | `session.revoked`, `session.ended`, `session.removed` | a Session (`id`: `sess_…`) | [`Revocation::Session`] |
//! | `user.deleted` | `{"object": "user", "id": "user_…", "deleted": true}` | [`Revocation::User`] |
//! | `user.updated` with `banned` or `locked` true | a User | [`Revocation::User`] |
//! | `organizationMembership.deleted` | an OrganizationMembership (`organization.id`, `public_user_data.user_id`) | [`Revocation::Membership`] |
//! | `organization.deleted` | `{"object": "organization", "id": "org_…", "deleted": true}` | [`Revocation::Organization`] |
//!
//! Every other type (and `user.updated` that neither bans nor locks) is
//! [`Parsed::Ignored`]. A body that is not such an envelope, or whose `data`
//! lacks what its type needs, is an [`EventError`]. Bodies are bounded
//! before they get here (the endpoint's body cap); nesting is bounded here
//! ([`MAX_DEPTH`]) and ids are checked ([`MAX_ID_LEN`], Clerk's alphabet).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::revocation::{Cause, Revocation, RevocationEvent};

/// Deepest nesting of arrays and objects accepted in a body (a Clerk User
/// nests 4 or 5 levels, metadata a few more).
pub const MAX_DEPTH: usize = 64;
/// Longest Clerk id accepted (`user_` and 27 characters, in practice).
pub const MAX_ID_LEN: usize = 128;
/// Longest event type accepted.
pub const MAX_TYPE_LEN: usize = 128;

/// The event types the `event_type` metric label names; any other is
/// `other`.
pub const KNOWN_TYPES: &[&str] = &[
    "session.created",
    "session.ended",
    "session.removed",
    "session.revoked",
    "user.created",
    "user.updated",
    "user.deleted",
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "email.created",
    "sms.created",
];

/// `event_type` of a type outside [`KNOWN_TYPES`].
pub const OTHER_TYPE: &str = "other";

/// The metric label of an event type: itself if known, else [`OTHER_TYPE`].
pub fn type_label(event_type: &str) -> &'static str {
    KNOWN_TYPES.iter().copied().find(|t| *t == event_type).unwrap_or(OTHER_TYPE)
}

/// What a verified body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An event that revokes.
    Revoke(RevocationEvent),
    /// An event of this type that revokes nothing (acknowledged, counted).
    Ignored(String),
}

/// Why a body is not a Clerk event this server can read. The messages name
/// the field, never its contents.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not an object with a string `type` and an object `data`.
    #[error("the body is not a Clerk webhook event (a JSON object with a string `type` and an object `data`)")]
    NotAnEvent,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the body nests arrays and objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// `object` is present and is not `event`.
    #[error("the body's `object` is not \"event\"")]
    NotEventObject,
    /// `data` lacks a field its type needs, or the field is not an id.
    #[error("a {event_type} event without a valid `{field}`")]
    MissingField {
        /// The event type.
        event_type: &'static str,
        /// The field, as a JSON path.
        field: &'static str,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct WithId {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    banned: Option<bool>,
    #[serde(default)]
    locked: Option<bool>,
}

#[derive(Deserialize)]
struct Membership {
    #[serde(default)]
    organization: Option<WithId>,
    #[serde(default)]
    public_user_data: Option<PublicUserData>,
}

#[derive(Deserialize)]
struct PublicUserData {
    #[serde(default)]
    user_id: Option<String>,
}

/// Reads a verified delivery's body. `id` is the delivery's `svix-id` (the
/// event's deduplication key); `timestamp` its `svix-timestamp` (seconds),
/// the event time when the body has no `timestamp`.
pub fn parse(body: &[u8], id: &str, timestamp: i64) -> Result<Parsed, EventError> {
    check_depth(body)?;
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|_| EventError::NotAnEvent)?;
    if envelope.event_type.is_empty() || envelope.event_type.len() > MAX_TYPE_LEN {
        return Err(EventError::NotAnEvent);
    }
    if !envelope.data.get().starts_with('{') {
        return Err(EventError::NotAnEvent);
    }
    if envelope.object.as_deref().is_some_and(|o| o != "event") {
        return Err(EventError::NotEventObject);
    }
    let at_ms = envelope.timestamp.unwrap_or_else(|| u64::try_from(timestamp).unwrap_or(0).saturating_mul(1000));
    let event_type = type_label(&envelope.event_type);
    let data = envelope.data.get();
    let missing = |field| EventError::MissingField { event_type, field };
    let (revocation, cause) = match event_type {
        "session.revoked" | "session.ended" | "session.removed" => {
            let session: WithId = serde_json::from_str(data).map_err(|_| missing("data.id"))?;
            let sid = clerk_id(session.id).ok_or_else(|| missing("data.id"))?;
            let cause = match event_type {
                "session.revoked" => Cause::SessionRevoked,
                "session.ended" => Cause::SessionEnded,
                _ => Cause::SessionRemoved,
            };
            (Revocation::Session { sid }, cause)
        }
        "user.deleted" => {
            let user: WithId = serde_json::from_str(data).map_err(|_| missing("data.id"))?;
            (Revocation::User { sub: clerk_id(user.id).ok_or_else(|| missing("data.id"))? }, Cause::UserDeleted)
        }
        "user.updated" => {
            let user: User = serde_json::from_str(data).map_err(|_| missing("data.id"))?;
            let cause = match (user.banned, user.locked) {
                (Some(true), _) => Cause::UserBanned,
                (_, Some(true)) => Cause::UserLocked,
                _ => return Ok(Parsed::Ignored(event_type.to_owned())),
            };
            (Revocation::User { sub: clerk_id(user.id).ok_or_else(|| missing("data.id"))? }, cause)
        }
        "organizationMembership.deleted" => {
            let m: Membership = serde_json::from_str(data).map_err(|_| missing("data.organization.id"))?;
            let org_id = clerk_id(m.organization.and_then(|o| o.id)).ok_or_else(|| missing("data.organization.id"))?;
            let sub = clerk_id(m.public_user_data.and_then(|p| p.user_id))
                .ok_or_else(|| missing("data.public_user_data.user_id"))?;
            (Revocation::Membership { sub, org_id }, Cause::MembershipRemoved)
        }
        "organization.deleted" => {
            let org: WithId = serde_json::from_str(data).map_err(|_| missing("data.id"))?;
            (
                Revocation::Organization { org_id: clerk_id(org.id).ok_or_else(|| missing("data.id"))? },
                Cause::OrganizationDeleted,
            )
        }
        _ => return Ok(Parsed::Ignored(envelope.event_type)),
    };
    Ok(Parsed::Revoke(RevocationEvent { id: id.to_owned(), revocation, cause, at_ms }))
}

/// A Clerk id: 1 to [`MAX_ID_LEN`] ASCII letters, digits, `_` or `-`.
fn clerk_id(id: Option<String>) -> Option<String> {
    id.filter(|id| {
        !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Refuses JSON nested deeper than [`MAX_DEPTH`] (brackets inside strings
/// do not count), before serde reads it.
fn check_depth(body: &[u8]) -> Result<(), EventError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(EventError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "msg_2cQ8Tr9yVzq0f3kR1tXhYb6wPnL";
    const SVIX_TS: i64 = 1_700_000_000;

    fn revoke(body: serde_json::Value) -> RevocationEvent {
        match parse(body.to_string().as_bytes(), ID, SVIX_TS) {
            Ok(Parsed::Revoke(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    fn envelope(event_type: &str, data: serde_json::Value) -> serde_json::Value {
        json!({
            "data": data,
            "event_attributes": {"http_request": {"client_ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}},
            "instance_id": "ins_2GIoQhbUpy0hX7B2cVkuTMinXoD",
            "object": "event",
            "timestamp": 1_700_000_123_456u64,
            "type": event_type
        })
    }

    /// A Session as Clerk sends it in session.* events.
    fn session(status: &str) -> serde_json::Value {
        json!({
            "abandon_at": 1_702_592_123_000u64,
            "actor": null,
            "client_id": "client_2cQ8TqKZ3wF1sJ0bY4mXhR7vUeN",
            "created_at": 1_700_000_000_000u64,
            "expire_at": 1_700_604_800_000u64,
            "id": "sess_2cQ8TsBd4nR6yWq1ZkP0xLm9VhF",
            "last_active_at": 1_700_000_100_000u64,
            "latest_activity": {"browser_name": "Chrome", "device_type": "Macintosh", "is_mobile": false},
            "object": "session",
            "status": status,
            "updated_at": 1_700_000_123_000u64,
            "user_id": "user_2cQ8TpX3mB7vN1kR9sW4yZ0hLqD"
        })
    }

    /// A User as Clerk sends it in user.updated.
    fn user(banned: bool, locked: bool) -> serde_json::Value {
        json!({
            "backup_code_enabled": false,
            "banned": banned,
            "created_at": 1_690_000_000_000u64,
            "email_addresses": [{
                "email_address": "ada@example.com",
                "id": "idn_2cQ8TnV5bJ2xK8pR0wM3yZ7hLqF",
                "linked_to": [],
                "object": "email_address",
                "verification": {"attempts": null, "expire_at": null, "status": "verified", "strategy": "email_code"}
            }],
            "external_accounts": [],
            "first_name": "Ada",
            "id": "user_2cQ8TpX3mB7vN1kR9sW4yZ0hLqD",
            "last_name": "Lovelace",
            "locked": locked,
            "lockout_expires_in_seconds": null,
            "object": "user",
            "private_metadata": {},
            "public_metadata": {"plan": {"tier": "pro", "seats": [1, 2, [3]]}},
            "two_factor_enabled": false,
            "unsafe_metadata": {},
            "updated_at": 1_700_000_123_000u64,
            "username": null
        })
    }

    #[test]
    fn session_events_revoke_the_session() {
        for (event_type, cause) in [
            ("session.revoked", Cause::SessionRevoked),
            ("session.ended", Cause::SessionEnded),
            ("session.removed", Cause::SessionRemoved),
        ] {
            let e = revoke(envelope(event_type, session(event_type.trim_start_matches("session."))));
            assert_eq!(
                e,
                RevocationEvent {
                    id: ID.to_owned(),
                    revocation: Revocation::Session { sid: "sess_2cQ8TsBd4nR6yWq1ZkP0xLm9VhF".to_owned() },
                    cause,
                    at_ms: 1_700_000_123_456,
                }
            );
        }
    }

    #[test]
    fn user_deleted_banned_or_locked_revokes_the_user() {
        let deleted = revoke(envelope("user.deleted", json!({"deleted": true, "id": "user_2cQ8Tp", "object": "user"})));
        assert_eq!(deleted.revocation, Revocation::User { sub: "user_2cQ8Tp".to_owned() });
        assert_eq!(deleted.cause, Cause::UserDeleted);
        let banned = revoke(envelope("user.updated", user(true, false)));
        assert_eq!(banned.revocation, Revocation::User { sub: "user_2cQ8TpX3mB7vN1kR9sW4yZ0hLqD".to_owned() });
        assert_eq!(banned.cause, Cause::UserBanned);
        assert_eq!(revoke(envelope("user.updated", user(true, true))).cause, Cause::UserBanned);
        assert_eq!(revoke(envelope("user.updated", user(false, true))).cause, Cause::UserLocked);
        // An ordinary update (or an unban) revokes nothing.
        let body = envelope("user.updated", user(false, false)).to_string();
        assert_eq!(parse(body.as_bytes(), ID, SVIX_TS), Ok(Parsed::Ignored("user.updated".to_owned())));
    }

    #[test]
    fn membership_and_organization_deletions_revoke_by_org() {
        let membership = json!({
            "created_at": 1_690_000_000_000u64,
            "id": "orgmem_2cQ8TmR4vK1xJ7pN0wB3yZ6hLqE",
            "object": "organization_membership",
            "organization": {
                "created_at": 1_680_000_000_000u64,
                "created_by": "user_1vq84bqWzw7qmFgqSwN4CH1Wp0n",
                "id": "org_29w9IfBrPmcpi0IeBVaKtA7R94W",
                "image_url": "https://img.clerk.com/xxxxxx",
                "logo_url": null,
                "name": "Acme Inc",
                "object": "organization",
                "public_metadata": {},
                "slug": "acme-inc",
                "updated_at": 1_680_000_000_000u64
            },
            "permissions": ["org:sys_memberships:read"],
            "public_metadata": {},
            "public_user_data": {
                "first_name": "Ada",
                "identifier": "ada@example.com",
                "image_url": "https://img.clerk.com/yyyyyy",
                "last_name": "Lovelace",
                "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
                "user_id": "user_2cQ8TpX3mB7vN1kR9sW4yZ0hLqD"
            },
            "role": "org:admin",
            "updated_at": 1_690_000_000_000u64
        });
        let e = revoke(envelope("organizationMembership.deleted", membership));
        assert_eq!(
            e.revocation,
            Revocation::Membership {
                sub: "user_2cQ8TpX3mB7vN1kR9sW4yZ0hLqD".to_owned(),
                org_id: "org_29w9IfBrPmcpi0IeBVaKtA7R94W".to_owned()
            }
        );
        assert_eq!(e.cause, Cause::MembershipRemoved);
        let org = revoke(envelope(
            "organization.deleted",
            json!({"deleted": true, "id": "org_29w9IfBrPmcpi0IeBVaKtA7R94W", "object": "organization"}),
        ));
        assert_eq!(org.revocation, Revocation::Organization { org_id: "org_29w9IfBrPmcpi0IeBVaKtA7R94W".to_owned() });
        assert_eq!(org.cause, Cause::OrganizationDeleted);
    }

    #[test]
    fn the_event_time_falls_back_to_the_delivery_timestamp() {
        let mut body = envelope("session.revoked", session("revoked"));
        body.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(revoke(body).at_ms, 1_700_000_000_000);
    }

    #[test]
    fn other_types_are_ignored_and_labelled() {
        for t in ["session.created", "user.created", "organizationMembership.created", "role.created", "x"] {
            let body = envelope(t, json!({"id": "whatever"})).to_string();
            assert_eq!(parse(body.as_bytes(), ID, SVIX_TS), Ok(Parsed::Ignored(t.to_owned())));
        }
        assert_eq!(type_label("session.created"), "session.created");
        assert_eq!(type_label("role.created"), OTHER_TYPE);
        assert_eq!(type_label("user.updated\u{0}"), OTHER_TYPE);
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        for body in [
            "",
            "null",
            "[]",
            "not json",
            r#"{"type": "session.revoked"}"#,
            r#"{"type": 7, "data": {}}"#,
            r#"{"type": "session.revoked", "data": []}"#,
            r#"{"type": "", "data": {}}"#,
            r#"{"type": "session.revoked", "data": {"id": "sess_1"}, "timestamp": -5}"#,
        ] {
            assert_eq!(parse(body.as_bytes(), ID, SVIX_TS), Err(EventError::NotAnEvent), "{body}");
        }
        let wrong_object = r#"{"type": "session.revoked", "object": "user", "data": {"id": "sess_1"}}"#;
        assert_eq!(parse(wrong_object.as_bytes(), ID, SVIX_TS), Err(EventError::NotEventObject));
        let deep = format!(r#"{{"type": "x", "data": {{"a": {}1{}}}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(parse(deep.as_bytes(), ID, SVIX_TS), Err(EventError::TooDeep));
        // Brackets inside strings are not nesting.
        let brackets = format!(r#"{{"type": "x", "data": {{"a": "{}\"{}"}}}}"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(parse(brackets.as_bytes(), ID, SVIX_TS), Ok(Parsed::Ignored("x".to_owned())));
    }

    #[test]
    fn revoking_events_without_a_usable_id_are_refused() {
        let cases = [
            ("session.revoked", json!({"status": "revoked"}), "data.id"),
            ("session.ended", json!({"id": 12}), "data.id"),
            ("user.deleted", json!({"id": ""}), "data.id"),
            ("user.updated", json!({"banned": true}), "data.id"),
            ("organization.deleted", json!({"id": "org 1; DROP"}), "data.id"),
            (
                "organizationMembership.deleted",
                json!({"public_user_data": {"user_id": "user_1"}}),
                "data.organization.id",
            ),
            (
                "organizationMembership.deleted",
                json!({"organization": {"id": "org_1"}}),
                "data.public_user_data.user_id",
            ),
            ("user.deleted", json!({"id": "u".repeat(MAX_ID_LEN + 1)}), "data.id"),
        ];
        for (event_type, data, field) in cases {
            let body = envelope(event_type, data).to_string();
            let err = parse(body.as_bytes(), ID, SVIX_TS).unwrap_err();
            assert_eq!(err, EventError::MissingField { event_type: type_label(event_type), field }, "{body}");
            assert!(err.to_string().contains(field));
        }
    }
}
