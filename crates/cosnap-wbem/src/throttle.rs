//! Per-source throttling of password guesses.
//!
//! Each source (see [`Source`]) checks one password at a time (its *lane*), so a flood
//! from one place occupies at most one of the server's hashing slots and never queues in
//! front of other sources. After [`FREE_FAILURES`] wrong passwords, each further failure
//! blocks the source for an exponentially growing time: [`FIRST_DELAY`], doubled per
//! failure, at most [`MAX_DELAY`]. While blocked, a source's logins are answered `429` with
//! `Retry-After` and cost no hash; credentials verified before still pass (that check costs
//! one SHA-256, see [`crate::auth`]). A source's record is forgotten after a successful
//! login, or [`FORGET_AFTER`] after its last failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::Source;

/// Wrong passwords a source may send before it is slowed down.
pub const FREE_FAILURES: u32 = 10;
/// The first block, after failure number `FREE_FAILURES + 1`.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest block.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A source's failures are forgotten this long after its last one.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Sources remembered at once; beyond, the stalest idle ones are forgotten first.
const MAX_SOURCES: usize = 4096;

struct Entry {
    failures: u32,
    last_failure: Option<Instant>,
    blocked_until: Option<Instant>,
    lane: Arc<Semaphore>,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            failures: 0,
            last_failure: None,
            blocked_until: None,
            lane: Arc::new(Semaphore::new(1)),
        }
    }

    fn in_use(&self) -> bool {
        Arc::strong_count(&self.lane) > 1
    }

    fn stale(&self, now: Instant) -> bool {
        !self.in_use()
            && self
                .last_failure
                .is_none_or(|t| now.duration_since(t) >= FORGET_AFTER)
    }
}

#[derive(Default)]
pub struct Throttle {
    sources: Mutex<HashMap<Source, Entry>>,
}

/// The delay after failure number `failures`.
fn delay_for(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES + 1)?;
    let factor = 1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX);
    Some(FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY))
}

impl Throttle {
    /// How long `source` must still wait, if it is blocked.
    pub fn blocked(&self, source: Source, now: Instant) -> Option<Duration> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let until = sources.get(&source)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Waits for `source`'s lane: one password check per source at a time.
    pub async fn lane(&self, source: Source) -> OwnedSemaphorePermit {
        let lane = {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            make_room(&mut sources, Instant::now());
            sources
                .entry(source)
                .or_insert_with(Entry::new)
                .lane
                .clone()
        };
        lane.acquire_owned()
            .await
            .expect("a lane semaphore is never closed")
    }

    /// Records a wrong password from `source`.
    pub fn failed(&self, source: Source, now: Instant) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        make_room(&mut sources, now);
        let entry = sources.entry(source).or_insert_with(Entry::new);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = Some(now);
        if let Some(delay) = delay_for(entry.failures) {
            entry.blocked_until = Some(now + delay);
            tracing::warn!(
                "{} failed logins from one source; blocking it for {delay:?}",
                entry.failures
            );
        }
    }

    /// Forgets `source`'s failures after a good password.
    pub fn succeeded(&self, source: Source) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sources.get_mut(&source) {
            entry.failures = 0;
            entry.last_failure = None;
            entry.blocked_until = None;
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps the map under [`MAX_SOURCES`]: drops stale entries, then if need be the idle ones
/// whose last failure is oldest. Runs its scans only when the map is full.
fn make_room(sources: &mut HashMap<Source, Entry>, now: Instant) {
    if sources.len() < MAX_SOURCES {
        return;
    }
    sources.retain(|_, e| !e.stale(now));
    while sources.len() >= MAX_SOURCES {
        let oldest = sources
            .iter()
            .filter(|(_, e)| !e.in_use())
            .min_by_key(|(_, e)| e.last_failure)
            .map(|(s, _)| *s);
        match oldest {
            Some(s) => {
                sources.remove(&s);
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: u8) -> Source {
        Source::of(std::net::IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn delays_double_after_the_free_failures() {
        assert_eq!(delay_for(FREE_FAILURES), None);
        assert_eq!(delay_for(FREE_FAILURES + 1), Some(FIRST_DELAY));
        assert_eq!(delay_for(FREE_FAILURES + 3), Some(FIRST_DELAY * 4));
        assert_eq!(delay_for(FREE_FAILURES + 40), Some(MAX_DELAY));
        assert_eq!(delay_for(u32::MAX), Some(MAX_DELAY));
    }

    #[test]
    fn blocks_one_source_and_forgets_it_after_success() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed(src(1), now);
        }
        assert_eq!(t.blocked(src(1), now), None);
        t.failed(src(1), now);
        assert_eq!(t.blocked(src(1), now), Some(FIRST_DELAY));
        assert_eq!(t.blocked(src(2), now), None);
        assert_eq!(t.blocked(src(1), now + FIRST_DELAY), None);
        t.succeeded(src(1));
        t.failed(src(1), now);
        assert_eq!(t.blocked(src(1), now), None);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            t.failed(Source::of(std::net::IpAddr::from(i.to_be_bytes())), now);
        }
        assert!(t.len() <= MAX_SOURCES);
    }
}
