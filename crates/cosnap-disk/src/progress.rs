//! Progress reporting and cooperative cancellation for long operations (flatten, export).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Cooperative cancellation shared between a job and the work it runs.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress callback: `(bytes_done, bytes_total)` across the whole operation.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);
