//! Enumeration contexts: the rest of an Enumerate's results, waiting for Pull.
//!
//! A context holds an [`ItemSource`] (the provider's cursor, the filter, a few instances
//! read ahead) in the [`ContextTable`] shared with the CIM-XML pull operations; items are
//! read and encoded when a Pull asks for them. Contexts belong to the user who opened them
//! (another user's Pull sees `InvalidEnumerationContext`, never the data), expire after
//! [`ContextLimits::idle_timeout`] without a Pull, and are bounded per user and in total
//! (`w:QuotaLimit`) so that one client cannot hold the server's memory. A Pull takes the
//! source out of the table while it reads, so a second Pull on the same context meanwhile
//! is refused instead of interleaved.

use std::time::Duration;

use super::cursor::{Batch, ItemSource};
use super::fault::Fault;
use crate::context_table::{ContextTable, TableCaps, TableError};

#[derive(Debug, Clone, Copy)]
pub struct ContextLimits {
    /// Idle time after which a context is gone (WinRM's EnumerationTimeoutms, 60 s).
    pub idle_timeout: Duration,
    /// Open contexts one user may hold.
    pub per_user: usize,
    /// Open contexts in all.
    pub total: usize,
}

impl Default for ContextLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            per_user: 32,
            total: 1024,
        }
    }
}

/// All open contexts.
pub struct ContextStore {
    idle_timeout: Duration,
    table: ContextTable<ItemSource>,
}

impl ContextStore {
    pub fn new(limits: ContextLimits) -> Self {
        Self {
            idle_timeout: limits.idle_timeout,
            table: ContextTable::new(TableCaps {
                per_user: limits.per_user,
                total: limits.total,
            }),
        }
    }

    /// Checks that `user` may open one more context, before the Enumerate does any work.
    pub fn admit(&self, user: &str) -> Result<(), Fault> {
        self.table.admit(user).map_err(|e| fault(e, ""))
    }

    /// Opens a context reading from `source`; refuses when the user or the server is at
    /// its limit (`w:QuotaLimit`).
    pub fn open(&self, id: String, user: &str, source: ItemSource) -> Result<(), Fault> {
        self.table
            .open(id, user, self.idle_timeout, source)
            .map_err(|e| fault(e, ""))
    }

    /// Runs `read` on the context's source, out of the table meanwhile. The context is
    /// closed when it is spent (its end delivered, or the provider failed), kept otherwise
    /// (also after a fault such as an item too big for this Pull's envelope).
    pub fn pull(
        &self,
        id: &str,
        user: &str,
        read: impl FnOnce(&mut ItemSource) -> Result<Batch, Fault>,
    ) -> Result<Batch, Fault> {
        let mut source = self.table.take(id, user).map_err(|e| fault(e, id))?;
        let result = read(&mut source);
        if source.is_spent() {
            let _ = self.table.close(id, user);
        } else {
            self.table.put_back(id, source);
        }
        result
    }

    /// Closes a context.
    pub fn release(&self, id: &str, user: &str) -> Result<(), Fault> {
        self.table.close(id, user).map_err(|e| fault(e, id))
    }

    /// How many contexts are open (after dropping expired ones).
    pub fn open_count(&self) -> usize {
        self.table.open_count()
    }
}

/// The WS-Man fault for a refusal of the context table.
fn fault(e: TableError, id: &str) -> Fault {
    match e {
        TableError::Unknown => {
            let shown: String = id.chars().take(80).collect();
            Fault::invalid_enumeration_context(format!(
                "the enumeration context {shown:?} is not open: it ended, was released, expired after a minute without a Pull, or belongs to another user"
            ))
        }
        TableError::Busy => Fault::invalid_enumeration_context(e.to_string()),
        TableError::UserFull { .. } => {
            Fault::quota_limit(format!("{e}; pull them to the end or release them"))
        }
        TableError::ServerFull => Fault::quota_limit(format!("{e}; try again later")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosnap_cim::{BuiltCursor, Instance};
    use std::time::Instant;

    use super::super::cursor::Keep;
    use super::super::envelope::EnumerationMode;

    fn source(n: usize) -> ItemSource {
        let items = (0..n).map(|_| Instance::new("Msvm_ConcreteJob")).collect();
        ItemSource::new(
            Box::new(BuiltCursor::new(items)),
            Keep::All,
            EnumerationMode::Epr,
        )
    }

    fn read(max: usize) -> impl FnOnce(&mut ItemSource) -> Result<Batch, Fault> {
        move |s| {
            let p = crate::wsman::tests::Fake::default();
            s.next_batch(&p, max, usize::MAX, Instant::now() + Duration::from_secs(9))
        }
    }

    #[test]
    fn pulls_in_batches_and_closes_at_the_end() {
        let s = ContextStore::new(ContextLimits::default());
        s.open("c1".into(), "alice", source(5)).unwrap();
        let b = s.pull("c1", "alice", read(2)).unwrap();
        assert_eq!((b.items.len(), b.more), (2, true));
        assert_eq!(
            s.pull("c1", "bob", read(2)).unwrap_err().subcode,
            "wsen:InvalidEnumerationContext"
        );
        let b = s.pull("c1", "alice", read(10)).unwrap();
        assert_eq!((b.items.len(), b.more), (3, false));
        assert_eq!(s.open_count(), 0);
        assert!(s.pull("c1", "alice", read(1)).is_err());
    }

    #[test]
    fn a_second_pull_meanwhile_is_refused() {
        let s = ContextStore::new(ContextLimits::default());
        s.open("c1".into(), "alice", source(5)).unwrap();
        let inner = s.pull("c1", "alice", |src| {
            let again = s.pull("c1", "alice", read(1)).unwrap_err();
            assert_eq!(again.subcode, "wsen:InvalidEnumerationContext");
            read(1)(src)
        });
        assert_eq!(inner.unwrap().items.len(), 1);
        assert_eq!(s.pull("c1", "alice", read(9)).unwrap().items.len(), 4);
    }

    #[test]
    fn bounded_per_user_and_expiring() {
        let s = ContextStore::new(ContextLimits {
            idle_timeout: Duration::from_millis(50),
            per_user: 2,
            total: 3,
        });
        s.open("a".into(), "alice", source(2)).unwrap();
        s.open("b".into(), "alice", source(2)).unwrap();
        assert_eq!(
            s.open("c".into(), "alice", source(2)).unwrap_err().subcode,
            "w:QuotaLimit"
        );
        s.open("d".into(), "bob", source(2)).unwrap();
        assert!(s.admit("carol").is_err());
        s.release("a", "alice").unwrap();
        assert!(s.release("a", "alice").is_err());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.open_count(), 0);
        assert_eq!(
            s.pull("b", "alice", read(1)).unwrap_err().subcode,
            "wsen:InvalidEnumerationContext"
        );
    }
}
