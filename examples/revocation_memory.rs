//! Memory of the revocation index: fills it with 1,000,000 entries shaped
//! like Clerk's (ids of about 32 bytes, one event id each) and prints the
//! process' resident memory (VmRSS, from /proc/self/status) before and
//! after, and the bytes per entry. Uses the binary's allocator (jemalloc).
//!
//! Run: `cargo run --release --example revocation_memory [ENTRIES] [sessions|mixed]`
//! (one shape per process: memory freed by a first run would be reused by a
//! second and hide its growth).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clerk_introspect::revocation::index::{Index, TokenFacts};
use clerk_introspect::revocation::{Cause, Revocation, RevocationEvent};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// VmRSS in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("a number of kB") * 1024
}

/// A Clerk-like id: prefix and 27 base62 characters.
fn id(prefix: &str, n: usize) -> String {
    format!("{prefix}_2p{n:025}")
}

fn fill(index: &Index, entries: usize, mix: bool, now_ms: u64) {
    for n in 0..entries {
        let revocation = match (mix, n % 4) {
            (false, _) | (true, 0) => Revocation::Session { sid: id("sess", n) },
            (true, 1) => Revocation::User { sub: id("user", n) },
            (true, 2) => Revocation::Membership { sub: id("user", n), org_id: id("org", n) },
            _ => Revocation::Organization { org_id: id("org", n) },
        };
        let event = RevocationEvent { id: id("msg", n), revocation, cause: Cause::SessionRevoked, at_ms: now_ms };
        index.apply(&event, now_ms, true);
    }
}

fn main() {
    let entries: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mixed = std::env::args().nth(2).is_some_and(|m| m == "mixed");
    let shapes = [("sessions only", false), ("sessions, users, memberships, organizations (1/4 each)", true)];
    for (name, mix) in shapes.into_iter().filter(|(_, m)| *m == mixed) {
        let before = rss();
        let index = Index::new(Duration::from_secs(24 * 3600), entries);
        let start = Instant::now();
        fill(&index, entries, mix, now_ms);
        let took = start.elapsed();
        let after = rss();
        assert_eq!(index.len(), entries);
        // A lookup that misses, to show the index is usable at this size.
        let facts = TokenFacts { sid: Some("sess_x"), sub: Some("user_x"), iat: Some(0), org_id: Some("org_x") };
        assert!(index.check(&facts).is_none());
        let grown = after.saturating_sub(before);
        println!(
            "{name}: {entries} entries (+ {entries} event ids) in {took:.2?}: RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB), {} bytes per entry",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            grown as f64 / 1048576.0,
            grown / entries as u64
        );
        drop(index);
    }
}
