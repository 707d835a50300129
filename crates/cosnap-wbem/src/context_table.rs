//! The table of open enumeration contexts both front ends keep between requests: the
//! CIM-XML pull operations ([`crate::enumerations`]) and WS-Man Enumerate/Pull
//! ([`crate::wsman::enumeration`]), each with its own payload (a cursor and how to shape
//! what it yields) and its own wire errors.
//!
//! A context belongs to the user who opened it (another user's request sees it as
//! unknown, never the data), expires after its idle timeout, and there are at most
//! `per_user` per user and `total` in all. While a Pull runs, its payload is taken out of
//! the table, so the table's lock is never held across provider calls and a second Pull
//! on the same context in the meantime is refused instead of interleaved.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// Why the table refused a request; each front end words it in its own protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("the enumeration context is not open")]
    Unknown,
    #[error("another request is pulling from this enumeration context right now")]
    Busy,
    #[error("user {user} already holds {held} open enumerations")]
    UserFull { user: String, held: usize },
    #[error("the server holds too many open enumerations")]
    ServerFull,
}

/// How many contexts may be open.
#[derive(Debug, Clone, Copy)]
pub struct TableCaps {
    pub per_user: usize,
    pub total: usize,
}

struct Entry<T> {
    user: String,
    last_used: Instant,
    timeout: Duration,
    /// `None` while a Pull holds the payload.
    open: Option<T>,
}

/// Open contexts of one front end, by context name.
pub struct ContextTable<T> {
    caps: TableCaps,
    table: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> ContextTable<T> {
    pub fn new(caps: TableCaps) -> Self {
        Self {
            caps,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table after dropping contexts idle longer than their timeout.
    fn purged(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        let mut table = self.lock();
        let now = Instant::now();
        table.retain(|_, e| now.duration_since(e.last_used) < e.timeout);
        table
    }

    /// Checks that `user` may open one more context (before the Open does any work).
    pub fn admit(&self, user: &str) -> Result<(), TableError> {
        self.check_room(&self.purged(), user)
    }

    fn check_room(&self, table: &HashMap<String, Entry<T>>, user: &str) -> Result<(), TableError> {
        let held = table.values().filter(|e| e.user == user).count();
        if held >= self.caps.per_user {
            return Err(TableError::UserFull {
                user: user.to_string(),
                held,
            });
        }
        if table.len() >= self.caps.total {
            return Err(TableError::ServerFull);
        }
        Ok(())
    }

    /// Keeps `payload` under the name `id` for later Pulls.
    pub fn open(
        &self,
        id: String,
        user: &str,
        timeout: Duration,
        payload: T,
    ) -> Result<(), TableError> {
        let mut table = self.purged();
        self.check_room(&table, user)?;
        table.insert(
            id,
            Entry {
                user: user.to_string(),
                last_used: Instant::now(),
                timeout,
                open: Some(payload),
            },
        );
        Ok(())
    }

    /// Takes the payload out for one Pull; [`ContextTable::put_back`] returns it.
    pub fn take(&self, id: &str, user: &str) -> Result<T, TableError> {
        let mut table = self.purged();
        let Some(entry) = table.get_mut(id).filter(|e| e.user == user) else {
            return Err(TableError::Unknown);
        };
        entry.last_used = Instant::now();
        entry.open.take().ok_or(TableError::Busy)
    }

    /// Returns a payload taken for a Pull that did not reach its end.
    pub fn put_back(&self, id: &str, payload: T) {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(id) {
            entry.last_used = Instant::now();
            entry.open = Some(payload);
        }
    }

    /// Forgets a context (its end was delivered, it failed, or the client closed it).
    pub fn close(&self, id: &str, user: &str) -> Result<(), TableError> {
        let mut table = self.purged();
        match table.get(id) {
            Some(e) if e.user == user => {
                table.remove(id);
                Ok(())
            }
            _ => Err(TableError::Unknown),
        }
    }

    /// How many contexts are open (after dropping expired ones).
    pub fn open_count(&self) -> usize {
        self.purged().len()
    }
}

/// A context name nobody can guess: 128 random bits, as 32 hex digits.
pub fn random_name(rng: &SystemRandom) -> String {
    let mut b = [0u8; 16];
    if rng.fill(&mut b).is_err() {
        // Fall back to the clock: still unique, and contexts are checked per user.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(per_user: usize, total: usize) -> ContextTable<u32> {
        ContextTable::new(TableCaps { per_user, total })
    }

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn owned_taken_and_closed() {
        let t = table(4, 8);
        t.open("c".into(), "alice", LONG, 7).unwrap();
        assert_eq!(t.take("c", "bob"), Err(TableError::Unknown));
        assert_eq!(t.take("c", "alice"), Ok(7));
        assert_eq!(t.take("c", "alice"), Err(TableError::Busy));
        t.put_back("c", 8);
        assert_eq!(t.take("c", "alice"), Ok(8));
        assert_eq!(t.close("c", "bob"), Err(TableError::Unknown));
        t.close("c", "alice").unwrap();
        assert_eq!(t.close("c", "alice"), Err(TableError::Unknown));
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn capped_per_user_and_in_total_and_expiring() {
        let t = table(2, 3);
        let short = Duration::from_millis(40);
        t.open("a".into(), "alice", short, 1).unwrap();
        t.open("b".into(), "alice", short, 2).unwrap();
        assert!(matches!(
            t.open("c".into(), "alice", short, 3),
            Err(TableError::UserFull { held: 2, .. })
        ));
        t.open("d".into(), "bob", short, 4).unwrap();
        assert_eq!(t.admit("carol"), Err(TableError::ServerFull));
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(t.open_count(), 0);
        assert_eq!(t.admit("carol"), Ok(()));
    }

    #[test]
    fn names_are_random() {
        let rng = SystemRandom::new();
        let (a, b) = (random_name(&rng), random_name(&rng));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
