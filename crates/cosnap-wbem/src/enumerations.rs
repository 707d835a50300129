//! Open pull enumerations of the CIM-XML server (DSP0200 1.4 §5.3.2.1): the cursor each
//! Open left behind, waiting for the client's Pull or Close, kept in the
//! [`ContextTable`] shared with WS-Man.
//!
//! An open enumeration holds the provider's [`InstanceCursor`] (for the host: the paths
//! still to deliver, not the instances) plus how to shape what it yields. It belongs to
//! the user who opened it (another user's Pull sees `CIM_ERR_INVALID_ENUMERATION_CONTEXT`,
//! never the data), expires after its operation timeout without a request, and there are
//! at most [`PullLimits::per_user`] per user and [`PullLimits::total`] in all
//! (`CIM_ERR_SERVER_LIMITS_EXCEEDED` beyond). While a Pull runs, its cursor is taken out
//! of the table, so the table's lock is never held across provider calls and a second
//! Pull on the same context in the meantime is refused instead of interleaved.

use std::time::Duration;

use cosnap_cim::{CimError, CimStatus, ClassDef, InstanceCursor};
use ring::rand::SystemRandom;

use crate::context_table::{ContextTable, TableCaps, TableError, random_name};

#[derive(Debug, Clone, Copy)]
pub struct PullLimits {
    /// Idle time allowed when the client names no `OperationTimeout`.
    pub default_timeout: Duration,
    /// Largest `OperationTimeout` accepted (larger, or 0 = never, is refused).
    pub max_timeout: Duration,
    /// Open enumerations one user may hold.
    pub per_user: usize,
    /// Open enumerations in all.
    pub total: usize,
    /// Most objects in one Open or Pull response, whatever `MaxObjectCount` asks.
    pub max_batch: usize,
}

impl Default for PullLimits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(600),
            per_user: 32,
            total: 1024,
            max_batch: 1000,
        }
    }
}

/// What a response to a Pull on this enumeration carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Yield {
    /// `VALUE.INSTANCEWITHPATH` (PullInstancesWithPath).
    InstancesWithPath,
    /// `INSTANCEPATH` (PullInstancePaths).
    Paths,
}

/// How the enumeration's instances are shaped before they are written.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// `PropertyList` of the Open.
    pub property_list: Option<Vec<String>>,
    /// `DeepInheritance=false`: keep only the properties this class declares.
    pub declared_only: Option<ClassDef>,
}

/// One open enumeration.
pub struct Enumeration {
    pub cursor: Box<dyn InstanceCursor>,
    pub yields: Yield,
    pub shape: Shape,
    pub timeout: Duration,
}

/// Every open enumeration of one server.
pub struct Enumerations {
    limits: PullLimits,
    table: ContextTable<Enumeration>,
    rng: SystemRandom,
}

impl Default for Enumerations {
    fn default() -> Self {
        Self::new(PullLimits::default())
    }
}

impl Enumerations {
    pub fn new(limits: PullLimits) -> Self {
        Self {
            limits,
            table: ContextTable::new(TableCaps {
                per_user: limits.per_user,
                total: limits.total,
            }),
            rng: SystemRandom::new(),
        }
    }

    pub fn limits(&self) -> &PullLimits {
        &self.limits
    }

    /// The idle timeout for an Open's `OperationTimeout` (seconds; `None` = the default).
    pub fn timeout_for(&self, seconds: Option<u64>) -> Result<Duration, CimError> {
        let Some(seconds) = seconds else {
            return Ok(self.limits.default_timeout);
        };
        let max = self.limits.max_timeout.as_secs();
        if seconds == 0 || seconds > max {
            return Err(CimError::new(
                CimStatus::InvalidOperationTimeout,
                format!("OperationTimeout must be between 1 and {max} seconds, not {seconds}"),
            ));
        }
        Ok(Duration::from_secs(seconds))
    }

    /// Checks that `user` may open one more enumeration (before the Open does any work).
    pub fn admit(&self, user: &str) -> Result<(), CimError> {
        self.table.admit(user).map_err(|e| cim_error(e, ""))
    }

    /// Keeps an enumeration for later Pulls and returns its context name.
    pub fn open(&self, user: &str, enumeration: Enumeration) -> Result<String, CimError> {
        let id = random_name(&self.rng);
        let timeout = enumeration.timeout;
        self.table
            .open(id.clone(), user, timeout, enumeration)
            .map_err(|e| cim_error(e, &id))?;
        Ok(id)
    }

    /// Takes the enumeration out for one Pull; [`Enumerations::put_back`] returns it.
    pub fn take(&self, id: &str, user: &str) -> Result<Enumeration, CimError> {
        self.table.take(id, user).map_err(|e| cim_error(e, id))
    }

    /// Returns an enumeration taken for a Pull that did not reach its end.
    pub fn put_back(&self, id: &str, enumeration: Enumeration) {
        self.table.put_back(id, enumeration);
    }

    /// Forgets an enumeration (its end was delivered, it failed, or the client closed it).
    pub fn close(&self, id: &str, user: &str) -> Result<(), CimError> {
        self.table.close(id, user).map_err(|e| cim_error(e, id))
    }

    /// How many enumerations are open (after dropping expired ones).
    pub fn open_count(&self) -> usize {
        self.table.open_count()
    }
}

/// The CIM status and wording for a refusal of the context table.
fn cim_error(e: TableError, id: &str) -> CimError {
    match e {
        TableError::Unknown => {
            let shown: String = id.chars().take(80).collect();
            CimError::new(
                CimStatus::InvalidEnumerationContext,
                format!(
                    "the enumeration context {shown:?} is not open: it reached its end, was closed, timed out, or belongs to another user"
                ),
            )
        }
        TableError::Busy => CimError::new(CimStatus::InvalidEnumerationContext, e.to_string()),
        TableError::UserFull { .. } => CimError::new(
            CimStatus::ServerLimitsExceeded,
            format!("{e}; pull them to the end or close them"),
        ),
        TableError::ServerFull => CimError::new(
            CimStatus::ServerLimitsExceeded,
            format!("{e}; try again later"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosnap_cim::{BuiltCursor, Instance};

    fn enumeration(n: usize, timeout: Duration) -> Enumeration {
        let items = (0..n).map(|_| Instance::new("C")).collect();
        Enumeration {
            cursor: Box::new(BuiltCursor::new(items)),
            yields: Yield::InstancesWithPath,
            shape: Shape::default(),
            timeout,
        }
    }

    #[test]
    fn owned_taken_and_closed() {
        let e = Enumerations::default();
        let id = e
            .open("alice", enumeration(3, Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            e.take(&id, "bob").err().unwrap().status,
            CimStatus::InvalidEnumerationContext
        );
        let taken = e.take(&id, "alice").unwrap();
        assert!(
            e.take(&id, "alice").is_err(),
            "a second Pull must not interleave"
        );
        e.put_back(&id, taken);
        assert!(e.take(&id, "alice").is_ok());
        e.close(&id, "alice").unwrap();
        assert!(e.close(&id, "alice").is_err());
        assert_eq!(e.open_count(), 0);
    }

    #[test]
    fn capped_per_user_and_in_total_and_expiring() {
        let e = Enumerations::new(PullLimits {
            per_user: 2,
            total: 3,
            ..PullLimits::default()
        });
        let short = Duration::from_millis(40);
        e.open("alice", enumeration(1, short)).unwrap();
        e.open("alice", enumeration(1, short)).unwrap();
        let refused = e.open("alice", enumeration(1, short)).err().unwrap();
        assert_eq!(refused.status, CimStatus::ServerLimitsExceeded);
        e.open("bob", enumeration(1, short)).unwrap();
        assert!(e.admit("carol").is_err());
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(e.open_count(), 0);
        assert!(e.admit("carol").is_ok());
    }

    #[test]
    fn operation_timeout_bounds() {
        let e = Enumerations::default();
        assert_eq!(e.timeout_for(None).unwrap(), Duration::from_secs(60));
        assert_eq!(e.timeout_for(Some(5)).unwrap(), Duration::from_secs(5));
        for bad in [0, 601, u64::from(u32::MAX)] {
            assert_eq!(
                e.timeout_for(Some(bad)).err().unwrap().status,
                CimStatus::InvalidOperationTimeout
            );
        }
    }
}
