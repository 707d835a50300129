//! What a long operation sees of the job it runs in: a cancel check, progress, the job's
//! id and a cancel token for cosnap-disk. Domain code takes `&dyn Work`, so it never names
//! the job runner; [`crate::JobCtx`] implements it, [`NoJob`] stands in outside a job.

use cosnap_disk::CancelToken;

use crate::error::Result;

/// The context a long operation runs in.
pub trait Work {
    /// `Err(Cancelled)` once a Terminate/Kill was requested and the work is cancellable.
    fn check_cancel(&self) -> Result<()>;

    /// Reports PercentComplete (0..=100; it never goes down).
    fn progress(&self, percent: u16);

    /// The job's InstanceID (recorded with journal entries), `None` outside a job.
    fn job_id(&self) -> Option<&str>;

    /// The token to hand to long cosnap-disk operations.
    fn cancel_token(&self) -> CancelToken;

    /// After a point of no return (e.g. a merge started) the work stops being cancellable.
    fn set_cancellable(&self, cancellable: bool);
}

/// Work outside any job (the synchronous `*_now(…, None)` callers): never cancelled,
/// progress goes nowhere.
pub struct NoJob;

impl Work for NoJob {
    fn check_cancel(&self) -> Result<()> {
        Ok(())
    }

    fn progress(&self, _percent: u16) {}

    fn job_id(&self) -> Option<&str> {
        None
    }

    fn cancel_token(&self) -> CancelToken {
        CancelToken::new()
    }

    fn set_cancellable(&self, _cancellable: bool) {}
}
