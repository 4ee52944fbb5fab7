//! The revocation index: what this replica refuses, asked on every
//! verification (cache hits included).
//!
//! Four maps, each read without a global lock (DashMap: sharded, a read
//! takes one shard's read lock for one lookup; a count kept beside each map
//! lets an empty map cost one atomic load):
//!
//! - sessions by `sid`: the token is refused whatever its `iat`;
//! - users by `sub` → the latest event time: tokens issued (`iat`) at or
//!   before it are refused, later ones pass (an unban never resurrects an
//!   old token, and a new one is never refused by an old ban);
//! - memberships by (`sub`, organization) → event time: tokens of that user
//!   whose organization claim names it, issued at or before it;
//! - organizations by id → event time: every token naming it, issued at or
//!   before it.
//!
//! Each entry lives until its event time + the retention
//! (`--revocation-retention`: the longest a token accepted by this server
//! can live), then a sweep ([`Index::sweep`]) drops it. Event ids are
//! remembered as long, so an event delivered again (Svix delivers at least
//! once; every replica also reads back its own events from the store) is
//! applied once. The number of entries is bounded (`--revocation-max-entries`):
//! when full, a new entry is refused ([`Applied::Full`]) and never evicts
//! another (evicting the one that expires soonest would silently let a
//! revoked token pass again); the webhook then answers 5xx, so Svix retries
//! once the sweep has made room, and a gauge and an alert say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use foldhash::fast::RandomState;

/// The maps: DashMap with foldhash (seeded per process), several times
/// faster than SipHash on ids of 30 bytes; keys are inserted only from
/// trusted events (Clerk's, an operator's), so a token cannot flood a bucket.
type DashMap<K, V> = dashmap::DashMap<K, V, RandomState>;

use super::{Cause, Revocation, RevocationEvent};

/// Longest id (event id, `sid`, `sub`, organization id) accepted in an
/// event, in bytes. Clerk's ids are about 30 bytes; the bound keeps an
/// entry small whatever arrives.
pub const MAX_ID_BYTES: usize = 256;

/// Why a token is refused: the kind of revocation, its cause, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Which kind of entry matched.
    pub kind: Kind,
    /// Why the entry exists.
    pub cause: Cause,
    /// When the event happened (Unix milliseconds).
    pub at_ms: u64,
}

/// The kinds of revocation, as metric labels and in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// By `sid`.
    Session,
    /// By `sub`, issued at or before.
    User,
    /// By (`sub`, organization), issued at or before.
    Membership,
    /// By organization, issued at or before.
    Organization,
}

impl Kind {
    /// Every kind, in label order.
    pub const ALL: [Kind; 4] = [Kind::Session, Kind::User, Kind::Membership, Kind::Organization];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::User => "user",
            Kind::Membership => "membership",
            Kind::Organization => "organization",
        }
    }

    /// The kind of a revocation.
    pub fn of(r: &Revocation) -> Kind {
        match r {
            Revocation::Session { .. } => Kind::Session,
            Revocation::User { .. } => Kind::User,
            Revocation::Membership { .. } => Kind::Membership,
            Revocation::Organization { .. } => Kind::Organization,
        }
    }
}

/// What a token says that revocation looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenFacts<'a> {
    /// `sid`.
    pub sid: Option<&'a str>,
    /// `sub`.
    pub sub: Option<&'a str>,
    /// `iat`, Unix seconds (absent: issued at an unknown time, which every
    /// user or organization revocation covers).
    pub iat: Option<i64>,
    /// The organization claim (v1 `org_id`, v2 `o.id`).
    pub org_id: Option<&'a str>,
}

/// What [`Index::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event is now enforced (a new entry, or a later time on one).
    New,
    /// Its id was applied before: nothing changed.
    Duplicate,
    /// Older than the retention: no token it refuses can still be valid.
    Expired,
    /// The index is full: not applied (nothing was evicted).
    Full,
}

/// Why an event cannot be applied at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// An id is empty.
    #[error("the event has an empty {0}")]
    Empty(&'static str),
    /// An id is longer than [`MAX_ID_BYTES`].
    #[error("the event's {0} is longer than {MAX_ID_BYTES} bytes")]
    TooLong(&'static str),
}

/// Checks the ids of an event (non-empty, at most [`MAX_ID_BYTES`]).
pub fn check_event(event: &RevocationEvent) -> Result<(), InvalidEvent> {
    let check = |what: &'static str, v: &str| {
        if v.is_empty() {
            Err(InvalidEvent::Empty(what))
        } else if v.len() > MAX_ID_BYTES {
            Err(InvalidEvent::TooLong(what))
        } else {
            Ok(())
        }
    };
    check("id", &event.id)?;
    match &event.revocation {
        Revocation::Session { sid } => check("session id", sid),
        Revocation::User { sub } => check("user id", sub),
        Revocation::Membership { sub, org_id } => check("user id", sub).and(check("organization id", org_id)),
        Revocation::Organization { org_id } => check("organization id", org_id),
    }
}

/// One revocation entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The latest event time it covers (Unix ms).
    at_ms: u64,
    /// When it may be dropped (Unix ms): the latest event time + retention.
    expires_ms: u64,
    /// The cause of the latest event.
    cause: Cause,
}

/// What is remembered of an event id.
#[derive(Debug)]
struct Seen {
    expires_ms: u64,
    /// Whether the store holds it (so another replica applies it): set when
    /// this replica appended it, or read it from the store.
    appended: AtomicBool,
}

/// A map and its size, so that an empty map costs one atomic load.
#[derive(Debug)]
struct Map<K: Eq + std::hash::Hash> {
    entries: DashMap<K, Entry>,
    len: AtomicUsize,
}

impl<K: Eq + std::hash::Hash + Clone> Map<K> {
    fn new() -> Self {
        Self { entries: DashMap::with_hasher(RandomState::default()), len: AtomicUsize::new(0) }
    }

    fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    fn get<Q>(&self, key: &Q) -> Option<Entry>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if self.is_empty() {
            return None;
        }
        self.entries.get(key).map(|e| *e)
    }

    /// Records an event at `at_ms`: a new entry (if `room`), or a later time
    /// on the existing one. Returns false when a new entry was needed and
    /// there was no room.
    fn upsert(&self, key: K, at_ms: u64, expires_ms: u64, cause: Cause, room: impl FnOnce() -> bool) -> bool {
        match self.entries.entry(key) {
            MapEntry::Occupied(mut o) => {
                let e = o.get_mut();
                if at_ms > e.at_ms {
                    e.at_ms = at_ms;
                    e.cause = cause;
                }
                e.expires_ms = e.expires_ms.max(expires_ms);
                true
            }
            MapEntry::Vacant(v) => {
                if !room() {
                    return false;
                }
                v.insert(Entry { at_ms, expires_ms, cause });
                self.len.fetch_add(1, Ordering::SeqCst);
                true
            }
        }
    }

    fn sweep(&self, now_ms: u64) -> usize {
        let mut dropped = 0;
        self.entries.retain(|_, e| {
            let keep = e.expires_ms > now_ms;
            dropped += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

/// The key of a membership: `sub`, a NUL byte (which no Clerk id has), the
/// organization id.
fn membership_key(sub: &str, org_id: &str) -> String {
    let mut k = String::with_capacity(sub.len() + 1 + org_id.len());
    k.push_str(sub);
    k.push('\0');
    k.push_str(org_id);
    k
}

/// [`membership_key`] built on the stack (no allocation on the hot path),
/// given to `f`; `None` when an id is longer than any entry's can be.
fn with_membership_key<R>(sub: &str, org_id: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
    if sub.len() > MAX_ID_BYTES || org_id.len() > MAX_ID_BYTES {
        return None;
    }
    let mut buf = [0u8; 2 * MAX_ID_BYTES + 1];
    let n = sub.len() + 1 + org_id.len();
    buf[..sub.len()].copy_from_slice(sub.as_bytes());
    buf[sub.len() + 1..n].copy_from_slice(org_id.as_bytes());
    std::str::from_utf8(&buf[..n]).ok().map(f)
}

/// Bits of the prefilter per entry of `--revocation-max-entries` (with
/// [`FILTER_HASHES`] probes: about 0.5 % false positives when full, each
/// costing only the map lookup it would have cost anyway).
pub const FILTER_BITS_PER_ENTRY: usize = 16;
/// Probes per key in the prefilter.
pub const FILTER_HASHES: u64 = 3;

/// A Bloom filter over every key in the maps: a token none of whose keys it
/// may contain (the common case) costs a few hashes and loads, no lock.
/// Never a false negative: a key's bits are set before the entry can be
/// asked for, and a rebuild (after a sweep) collects every key added while
/// it runs (see [`Index::sweep`]).
#[derive(Debug)]
struct Filter {
    bits: Box<[AtomicU64]>,
    mask: u64,
}

impl Filter {
    fn new(max_entries: usize) -> Filter {
        let bits = max_entries.saturating_mul(FILTER_BITS_PER_ENTRY).clamp(1 << 16, 1 << 31).next_power_of_two();
        Filter { bits: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(), mask: bits as u64 - 1 }
    }

    fn positions(&self, hash: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let (h1, h2) = (hash, hash.rotate_left(32) | 1);
        (0..FILTER_HASHES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&self, hash: u64) {
        for (word, bit) in self.positions(hash) {
            self.bits[word].fetch_or(bit, Ordering::SeqCst);
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash).all(|(word, bit)| self.bits[word].load(Ordering::Acquire) & bit != 0)
    }
}

/// The index (see the [module docs](self)).
#[derive(Debug)]
pub struct Index {
    sessions: Map<Box<str>>,
    users: Map<Box<str>>,
    memberships: Map<Box<str>>,
    organizations: Map<Box<str>>,
    seen: DashMap<Box<str>, Seen>,
    /// Whether any map has an entry: the one load a verification makes when
    /// nothing is revoked.
    any: AtomicBool,
    retention_ms: u64,
    max_entries: usize,
    hasher: RandomState,
    filter: arc_swap::ArcSwap<Filter>,
    /// The filter a sweep is building, which appliers also feed meanwhile.
    next_filter: arc_swap::ArcSwapOption<Filter>,
    /// One sweep at a time.
    sweeping: std::sync::Mutex<()>,
}

/// A key of the prefilter: its kind and its ids.
#[derive(Clone, Copy, Hash)]
enum FilterKey<'a> {
    Session(&'a str),
    User(&'a str),
    Membership(&'a str, &'a str),
    Organization(&'a str),
}

impl Index {
    /// An empty index keeping entries for `retention` after their event,
    /// at most `max_entries` of them.
    pub fn new(retention: Duration, max_entries: usize) -> Self {
        Self {
            sessions: Map::new(),
            users: Map::new(),
            memberships: Map::new(),
            organizations: Map::new(),
            seen: DashMap::with_hasher(RandomState::default()),
            any: AtomicBool::new(false),
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            max_entries,
            hasher: RandomState::default(),
            filter: arc_swap::ArcSwap::from_pointee(Filter::new(max_entries)),
            next_filter: arc_swap::ArcSwapOption::empty(),
            sweeping: std::sync::Mutex::new(()),
        }
    }

    fn hash(&self, key: FilterKey<'_>) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(key)
    }

    /// Sets `key`'s bits in the filter, and in the one a sweep is building.
    fn remember(&self, key: FilterKey<'_>) {
        let h = self.hash(key);
        self.filter.load().insert(h);
        // Ordered after the map insert: a rebuild that this load misses
        // iterates the maps after publishing, so it finds the entry.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(next) = &*self.next_filter.load() {
            next.insert(h);
        }
    }

    /// The retention.
    pub fn retention(&self) -> Duration {
        Duration::from_millis(self.retention_ms)
    }

    /// The bound on entries.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entries now (sessions, users, memberships, organizations).
    pub fn len(&self) -> usize {
        self.sessions.len() + self.users.len() + self.memberships.len() + self.organizations.len()
    }

    /// Entries of one kind.
    pub fn len_of(&self, kind: Kind) -> usize {
        match kind {
            Kind::Session => self.sessions.len(),
            Kind::User => self.users.len(),
            Kind::Membership => self.memberships.len(),
            Kind::Organization => self.organizations.len(),
        }
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Event ids remembered now.
    pub fn ids(&self) -> usize {
        self.seen.len()
    }

    /// Whether the token described by `facts` is revoked: the first entry
    /// that covers it, in the order session, user, membership, organization.
    #[inline]
    pub fn check(&self, facts: &TokenFacts<'_>) -> Option<Refusal> {
        if self.is_empty() {
            return None;
        }
        self.check_slow(facts)
    }

    fn check_slow(&self, facts: &TokenFacts<'_>) -> Option<Refusal> {
        let filter = self.filter.load();
        let may = |map_empty: bool, key: FilterKey<'_>| !map_empty && filter.may_contain(self.hash(key));
        let refusal = |kind, e: Entry| Refusal { kind, cause: e.cause, at_ms: e.at_ms };
        if let Some(sid) = facts.sid
            && may(self.sessions.is_empty(), FilterKey::Session(sid))
            && let Some(e) = self.sessions.get(sid)
        {
            return Some(refusal(Kind::Session, e));
        }
        // A token without iat is covered by every time-bounded entry.
        let issued_ms = facts.iat.map_or(0, |iat| u64::try_from(iat).unwrap_or(0).saturating_mul(1000));
        let covers = |e: &Entry| issued_ms <= e.at_ms;
        if let Some(sub) = facts.sub
            && may(self.users.is_empty(), FilterKey::User(sub))
            && let Some(e) = self.users.get(sub).filter(covers)
        {
            return Some(refusal(Kind::User, e));
        }
        let org = facts.org_id?;
        if let Some(sub) = facts.sub
            && may(self.memberships.is_empty(), FilterKey::Membership(sub, org))
            && let Some(e) = with_membership_key(sub, org, |k| self.memberships.get(k)).flatten().filter(covers)
        {
            return Some(refusal(Kind::Membership, e));
        }
        if !may(self.organizations.is_empty(), FilterKey::Organization(org)) {
            return None;
        }
        self.organizations.get(org).filter(covers).map(|e| refusal(Kind::Organization, e))
    }

    /// Whether the event with `id` was applied here.
    pub fn was_applied(&self, id: &str) -> bool {
        self.seen.contains_key(id)
    }

    /// Whether the event with `id` is known to be in the store.
    pub fn was_appended(&self, id: &str) -> bool {
        self.seen.get(id).is_some_and(|s| s.appended.load(Ordering::Acquire))
    }

    /// Notes that the event with `id` is in the store; false if the id is
    /// not known here.
    pub fn mark_appended(&self, id: &str) -> bool {
        self.seen.get(id).map(|s| s.appended.store(true, Ordering::Release)).is_some()
    }

    /// Applies `event` at `now_ms` (Unix ms), once per id; `appended` says
    /// whether the store holds it already (it was read from there).
    /// The caller checks the event first ([`check_event`]).
    pub fn apply(&self, event: &RevocationEvent, now_ms: u64, appended: bool) -> Applied {
        let expires_ms = event.at_ms.saturating_add(self.retention_ms);
        if expires_ms <= now_ms {
            return Applied::Expired;
        }
        if let Some(seen) = self.seen.get(event.id.as_str()) {
            if appended {
                seen.appended.store(true, Ordering::Release);
            }
            return Applied::Duplicate;
        }
        if self.seen.len() >= self.max_entries {
            return Applied::Full;
        }
        let room = || self.len() < self.max_entries;
        let (at, cause) = (event.at_ms, event.cause);
        let stored = match &event.revocation {
            Revocation::Session { sid } => self.sessions.upsert(sid.as_str().into(), at, expires_ms, cause, room),
            Revocation::User { sub } => self.users.upsert(sub.as_str().into(), at, expires_ms, cause, room),
            Revocation::Membership { sub, org_id } => {
                self.memberships.upsert(membership_key(sub, org_id).into(), at, expires_ms, cause, room)
            }
            Revocation::Organization { org_id } => {
                self.organizations.upsert(org_id.as_str().into(), at, expires_ms, cause, room)
            }
        };
        if !stored {
            return Applied::Full;
        }
        self.remember(match &event.revocation {
            Revocation::Session { sid } => FilterKey::Session(sid),
            Revocation::User { sub } => FilterKey::User(sub),
            Revocation::Membership { sub, org_id } => FilterKey::Membership(sub, org_id),
            Revocation::Organization { org_id } => FilterKey::Organization(org_id),
        });
        self.any.store(true, Ordering::SeqCst);
        match self.seen.entry(event.id.as_str().into()) {
            MapEntry::Occupied(o) => {
                // Applied concurrently under the same id: the entry above
                // changed nothing the first did not.
                if appended {
                    o.get().appended.store(true, Ordering::Release);
                }
                Applied::Duplicate
            }
            MapEntry::Vacant(v) => {
                v.insert(Seen { expires_ms, appended: AtomicBool::new(appended) });
                Applied::New
            }
        }
    }

    /// Drops every entry and id whose retention is over at `now_ms`;
    /// returns how many entries were dropped.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let _one = self.sweeping.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = self.sessions.sweep(now_ms)
            + self.users.sweep(now_ms)
            + self.memberships.sweep(now_ms)
            + self.organizations.sweep(now_ms);
        self.seen.retain(|_, s| s.expires_ms > now_ms);
        if dropped > 0 {
            self.rebuild_filter();
        }
        let remaining = self.len();
        if remaining == 0 {
            self.any.store(false, Ordering::SeqCst);
            // An entry applied meanwhile counts itself before it raises the
            // flag; raise it again if one did, so it is never hidden.
            let applied_meanwhile = self.len();
            if applied_meanwhile > 0 {
                self.any.store(true, Ordering::SeqCst);
            }
        }
        dropped
    }

    /// A fresh filter holding exactly the keys now in the maps, swapped in.
    /// Appliers feed it while it is built (through `next_filter`): an
    /// applier that did not see it yet had inserted its entry before
    /// looking, so the iteration below (which starts after it is published)
    /// finds that entry.
    fn rebuild_filter(&self) {
        let next = Arc::new(Filter::new(self.max_entries));
        self.next_filter.store(Some(next.clone()));
        std::sync::atomic::fence(Ordering::SeqCst);
        for e in self.sessions.entries.iter() {
            next.insert(self.hash(FilterKey::Session(e.key())));
        }
        for e in self.users.entries.iter() {
            next.insert(self.hash(FilterKey::User(e.key())));
        }
        for e in self.memberships.entries.iter() {
            if let Some((sub, org)) = e.key().split_once('\0') {
                next.insert(self.hash(FilterKey::Membership(sub, org)));
            }
        }
        for e in self.organizations.entries.iter() {
            next.insert(self.hash(FilterKey::Organization(e.key())));
        }
        self.filter.store(next);
        self.next_filter.store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const T: u64 = 1_800_000_000_000;

    fn event(id: &str, revocation: Revocation, cause: Cause, at_ms: u64) -> RevocationEvent {
        RevocationEvent { id: id.into(), revocation, cause, at_ms }
    }

    fn session(sid: &str) -> Revocation {
        Revocation::Session { sid: sid.into() }
    }

    fn user(sub: &str) -> Revocation {
        Revocation::User { sub: sub.into() }
    }

    fn facts<'a>(sid: &'a str, sub: &'a str, iat_s: u64, org: Option<&'a str>) -> TokenFacts<'a> {
        TokenFacts { sid: Some(sid), sub: Some(sub), iat: Some(iat_s as i64), org_id: org }
    }

    #[test]
    fn an_empty_index_refuses_nothing() {
        let index = Index::new(HOUR, 10);
        assert!(index.is_empty());
        assert_eq!(index.check(&facts("sess_1", "user_1", T / 1000, Some("org_1"))), None);
        assert_eq!(index.check(&TokenFacts::default()), None);
    }

    #[test]
    fn a_session_refuses_its_tokens_whenever_issued_and_no_other() {
        let index = Index::new(HOUR, 10);
        assert_eq!(index.apply(&event("e1", session("sess_1"), Cause::SessionEnded, T), T, false), Applied::New);
        let r = index.check(&facts("sess_1", "user_1", T / 1000 + 30, None)).unwrap();
        assert_eq!(r, Refusal { kind: Kind::Session, cause: Cause::SessionEnded, at_ms: T });
        assert_eq!(index.check(&facts("sess_2", "user_1", T / 1000 - 30, None)), None, "another session");
    }

    #[test]
    fn a_user_refuses_tokens_issued_at_or_before_and_an_unban_resurrects_nothing() {
        let index = Index::new(HOUR, 10);
        index.apply(&event("ban", user("user_1"), Cause::UserBanned, T + 500), T, false);
        let before = |iat_s| index.check(&facts("sess_x", "user_1", iat_s, None)).map(|r| r.kind);
        assert_eq!(before(T / 1000 - 10), Some(Kind::User));
        assert_eq!(before(T / 1000), Some(Kind::User), "issued in the event's second: refused");
        assert_eq!(before(T / 1000 + 1), None, "issued after: valid");
        assert_eq!(index.check(&facts("sess_x", "user_2", T / 1000 - 10, None)), None, "another user");
        // No iat: covered.
        let no_iat = TokenFacts { sub: Some("user_1"), ..TokenFacts::default() };
        assert_eq!(index.check(&no_iat).map(|r| r.kind), Some(Kind::User));
        // An older event (out of order) does not move the time back.
        index.apply(&event("old", user("user_1"), Cause::UserLocked, T - 60_000), T, false);
        assert_eq!(before(T / 1000).map(|_| ()), Some(()));
        let r = index.check(&facts("s", "user_1", T / 1000, None)).unwrap();
        assert_eq!((r.cause, r.at_ms), (Cause::UserBanned, T + 500));
        // A later one (banned again after an unban) moves it forward.
        index.apply(&event("again", user("user_1"), Cause::UserDeleted, T + 10_000), T, false);
        assert_eq!(before(T / 1000 + 5), Some(Kind::User));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn memberships_and_organizations_refuse_only_tokens_naming_them() {
        let index = Index::new(HOUR, 10);
        let m = Revocation::Membership { sub: "user_1".into(), org_id: "org_a".into() };
        index.apply(&event("m", m, Cause::MembershipRemoved, T), T, false);
        let check = |sub, org, iat_s| index.check(&facts("s", sub, iat_s, org)).map(|r| r.kind);
        assert_eq!(check("user_1", Some("org_a"), T / 1000), Some(Kind::Membership));
        assert_eq!(check("user_1", Some("org_b"), T / 1000), None, "another org");
        assert_eq!(check("user_1", None, T / 1000), None, "no active org");
        assert_eq!(check("user_2", Some("org_a"), T / 1000), None, "another member");
        assert_eq!(check("user_1", Some("org_a"), T / 1000 + 1), None, "issued after (re-added)");
        // No confusion between "ab" + "c" and "a" + "bc".
        let m2 = Revocation::Membership { sub: "ab".into(), org_id: "c".into() };
        index.apply(&event("m2", m2, Cause::MembershipRemoved, T), T, false);
        assert_eq!(check("a", Some("bc"), T / 1000), None);
        let long = "u".repeat(MAX_ID_BYTES + 1);
        assert_eq!(check(&long, Some("org_a"), T / 1000), None, "longer than any entry's id");

        let o = Revocation::Organization { org_id: "org_z".into() };
        index.apply(&event("o", o, Cause::OrganizationDeleted, T), T, false);
        assert_eq!(check("user_9", Some("org_z"), T / 1000), Some(Kind::Organization));
        assert_eq!(check("user_9", Some("org_y"), T / 1000), None);
    }

    #[test]
    fn each_id_is_applied_once_and_appended_is_tracked_apart() {
        let index = Index::new(HOUR, 10);
        let e = event("svix_1", session("sess_1"), Cause::SessionRevoked, T);
        assert_eq!(index.apply(&e, T, false), Applied::New);
        assert!(index.was_applied("svix_1") && !index.was_appended("svix_1"));
        assert_eq!(index.apply(&e, T, false), Applied::Duplicate);
        assert!(!index.was_appended("svix_1"), "a local duplicate is not an append");
        assert_eq!(index.apply(&e, T, true), Applied::Duplicate);
        assert!(index.was_appended("svix_1"), "read back from the store");
        assert!(index.mark_appended("svix_1"));
        assert!(!index.mark_appended("unknown"));
    }

    #[test]
    fn entries_expire_after_the_retention() {
        let index = Index::new(HOUR, 10);
        let h = HOUR.as_millis() as u64;
        assert_eq!(index.apply(&event("old", session("s0"), Cause::Operator, T - h), T, false), Applied::Expired);
        index.apply(&event("a", session("s1"), Cause::Operator, T), T, false);
        index.apply(&event("b", user("u1"), Cause::Operator, T + 1000), T, false);
        assert_eq!(index.sweep(T + h), 1, "the session's time is up");
        assert_eq!(index.len(), 1);
        let u1 = TokenFacts { sub: Some("u1"), iat: Some((T / 1000) as i64), ..TokenFacts::default() };
        assert!(index.check(&u1).is_some(), "kept through the filter's rebuild");
        assert!(index.check(&facts("s1", "x", 0, None)).is_none(), "dropped");
        assert!(!index.was_applied("a") && index.was_applied("b"));
        assert_eq!(index.sweep(T + h + 1000), 1);
        assert!(index.is_empty() && index.ids() == 0);
    }

    #[test]
    fn a_full_index_refuses_new_entries_and_evicts_nothing() {
        let index = Index::new(HOUR, 2);
        assert_eq!(index.apply(&event("1", session("s1"), Cause::Operator, T), T, false), Applied::New);
        assert_eq!(index.apply(&event("2", user("u1"), Cause::Operator, T), T, false), Applied::New);
        assert_eq!(index.apply(&event("3", session("s3"), Cause::Operator, T), T, false), Applied::Full);
        assert!(!index.was_applied("3"), "retried later");
        assert!(index.check(&facts("s1", "x", 0, None)).is_some(), "nothing evicted");
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn events_are_checked() {
        let ok = event("e", session("sess_1"), Cause::Operator, T);
        assert_eq!(check_event(&ok), Ok(()));
        assert_eq!(check_event(&event("", session("s"), Cause::Operator, T)), Err(InvalidEvent::Empty("id")));
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert_eq!(check_event(&event("e", user(&long), Cause::Operator, T)), Err(InvalidEvent::TooLong("user id")));
        let m = Revocation::Membership { sub: "u".into(), org_id: String::new() };
        assert_eq!(check_event(&event("e", m, Cause::Operator, T)), Err(InvalidEvent::Empty("organization id")));
    }
}
