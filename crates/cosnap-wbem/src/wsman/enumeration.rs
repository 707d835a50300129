//! Enumeration contexts: the rest of an Enumerate's results, waiting for Pull.
//!
//! Results are encoded once, at Enumerate time (a snapshot, as WinRM's WMI plugin gives),
//! and handed out in batches. Contexts belong to the user who opened them (another user's
//! Pull sees `InvalidEnumerationContext`, never the data), expire after
//! [`ContextLimits::idle_timeout`] without a Pull, and are bounded per user and in total so
//! that one client cannot hold the server's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::fault::Fault;

#[derive(Debug, Clone, Copy)]
pub struct ContextLimits {
    /// Idle time after which a context is gone (WinRM's EnumerationTimeoutms, 60 s).
    pub idle_timeout: Duration,
    /// Open contexts one user may hold.
    pub per_user: usize,
    /// Open contexts in all.
    pub total: usize,
    /// Encoded bytes all open contexts may hold together.
    pub total_bytes: usize,
}

impl Default for ContextLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            per_user: 32,
            total: 1024,
            total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The items still to deliver, already encoded as the Pull response carries them.
#[derive(Debug)]
struct Context {
    user: String,
    items: VecDeque<String>,
    bytes: usize,
    last_used: Instant,
}

/// All open contexts.
#[derive(Debug)]
pub struct ContextStore {
    limits: ContextLimits,
    state: Mutex<HashMap<String, Context>>,
}

/// A batch taken from a context.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub items: Vec<String>,
    /// Whether items remain (the context stays open).
    pub more: bool,
}

impl ContextStore {
    pub fn new(limits: ContextLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Context>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn purge(&self, map: &mut HashMap<String, Context>, now: Instant) {
        let idle = self.limits.idle_timeout;
        map.retain(|_, c| now.duration_since(c.last_used) < idle);
    }

    /// Opens a context holding `items`; refuses when the user or the server is at its
    /// limit (`w:QuotaLimit`).
    pub fn open(&self, id: String, user: &str, items: VecDeque<String>) -> Result<(), Fault> {
        let now = Instant::now();
        let bytes: usize = items.iter().map(String::len).sum();
        let mut map = self.lock();
        self.purge(&mut map, now);
        let mine = map.values().filter(|c| c.user == user).count();
        if mine >= self.limits.per_user {
            return Err(Fault::quota_limit(format!(
                "user {user} already holds {mine} open enumerations; pull them to the end or release them"
            )));
        }
        let held: usize = map.values().map(|c| c.bytes).sum();
        if map.len() >= self.limits.total || held + bytes > self.limits.total_bytes {
            return Err(Fault::quota_limit(
                "the server holds too many open enumerations; try again later",
            ));
        }
        map.insert(
            id,
            Context {
                user: user.to_string(),
                items,
                bytes,
                last_used: now,
            },
        );
        Ok(())
    }

    /// Takes up to `max` items (at least one) whose encoded sizes fit in `budget` bytes.
    /// The context is closed when it runs empty.
    pub fn pull(&self, id: &str, user: &str, max: usize, budget: usize) -> Result<Batch, Fault> {
        let now = Instant::now();
        let mut map = self.lock();
        self.purge(&mut map, now);
        let Some(ctx) = map.get_mut(id).filter(|c| c.user == user) else {
            return Err(unknown_context(id));
        };
        ctx.last_used = now;
        let items = take_batch(&mut ctx.items, max, budget);
        ctx.bytes -= items.iter().map(String::len).sum::<usize>();
        let more = !ctx.items.is_empty();
        if !more {
            map.remove(id);
        }
        Ok(Batch { items, more })
    }

    /// Closes a context.
    pub fn release(&self, id: &str, user: &str) -> Result<(), Fault> {
        let mut map = self.lock();
        self.purge(&mut map, Instant::now());
        match map.get(id) {
            Some(c) if c.user == user => {
                map.remove(id);
                Ok(())
            }
            _ => Err(unknown_context(id)),
        }
    }

    /// How many contexts are open (after dropping expired ones).
    pub fn open_count(&self) -> usize {
        let mut map = self.lock();
        self.purge(&mut map, Instant::now());
        map.len()
    }
}

fn unknown_context(id: &str) -> Fault {
    let shown: String = id.chars().take(80).collect();
    Fault::invalid_enumeration_context(format!(
        "the enumeration context {shown:?} is not open: it ended, was released, expired after a minute without a Pull, or belongs to another user"
    ))
}

/// Takes up to `max` items from the front whose sizes add up to at most `budget`; always
/// takes the first one (the caller faults when a single item does not fit).
pub fn take_batch(items: &mut VecDeque<String>, max: usize, budget: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0usize;
    while out.len() < max.max(1) {
        let Some(next) = items.front() else { break };
        if !out.is_empty() && used + next.len() > budget {
            break;
        }
        used += next.len();
        out.extend(items.pop_front());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> VecDeque<String> {
        (0..n).map(|i| format!("<i>{i}</i>")).collect()
    }

    #[test]
    fn pulls_in_batches_and_closes_at_the_end() {
        let s = ContextStore::new(ContextLimits::default());
        s.open("c1".into(), "alice", items(5)).unwrap();
        let b = s.pull("c1", "alice", 2, usize::MAX).unwrap();
        assert_eq!(b.items, vec!["<i>0</i>", "<i>1</i>"]);
        assert!(b.more);
        assert_eq!(
            s.pull("c1", "bob", 2, usize::MAX).unwrap_err().subcode,
            "wsen:InvalidEnumerationContext"
        );
        let b = s.pull("c1", "alice", 10, usize::MAX).unwrap();
        assert_eq!(b.items.len(), 3);
        assert!(!b.more);
        assert_eq!(s.open_count(), 0);
        assert!(s.pull("c1", "alice", 1, usize::MAX).is_err());
    }

    #[test]
    fn budget_cuts_batches_but_never_to_nothing() {
        let mut q: VecDeque<String> = ["aaaa", "bbbb", "cccc"].map(String::from).into();
        assert_eq!(take_batch(&mut q, 10, 9), vec!["aaaa", "bbbb"]);
        assert_eq!(take_batch(&mut q, 10, 1), vec!["cccc"]);
    }

    #[test]
    fn bounded_per_user_and_expiring() {
        let s = ContextStore::new(ContextLimits {
            idle_timeout: Duration::from_millis(50),
            per_user: 2,
            total: 3,
            total_bytes: 1 << 20,
        });
        s.open("a".into(), "alice", items(2)).unwrap();
        s.open("b".into(), "alice", items(2)).unwrap();
        assert_eq!(
            s.open("c".into(), "alice", items(2)).unwrap_err().subcode,
            "w:QuotaLimit"
        );
        s.open("d".into(), "bob", items(2)).unwrap();
        assert!(s.open("e".into(), "carol", items(2)).is_err());
        s.release("a", "alice").unwrap();
        assert!(s.release("a", "alice").is_err());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.open_count(), 0);
        assert_eq!(
            s.pull("b", "alice", 1, usize::MAX).unwrap_err().subcode,
            "wsen:InvalidEnumerationContext"
        );
    }
}
