//! Jobs (`Msvm_ConcreteJob`): rows in the repository, work on a background thread.
//!
//! A job is recorded (JobState 3 Starting → 4 Running) with its owner's pid and process
//! start time, runs its closure on a thread, and ends in 7 Completed, 8 Terminated (a
//! RequestStateChange(4) was honoured), 9 Killed (5) or 10 Exception (ErrorCode = the
//! method family's code, ErrorDescription = the message). Cancellation is cooperative: the
//! work polls [`JobCtx::check_cancel`] or hands [`JobCtx::cancel_token`] to cosnap-disk; a
//! request from another process reaches the job through the `cancel_requested` column,
//! which a watcher thread polls. Finished jobs are purged 5 minutes after they end
//! (TimeBeforeRemoval `00000000000500.000000:000`) whatever DeleteOnCompletion says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Instant;

use cosnap_disk::CancelToken;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{HostError, Result, concrete_job};
use crate::host::{Host, JobThread};
use crate::model::{Job, job_state};
use crate::repo;
use crate::util::{new_guid, now_ms};
use crate::work::Work;

/// How long [`Host::wait_job`] sleeps between polls of a job another process runs.
const POLL: std::time::Duration = std::time::Duration::from_millis(15);
/// How long [`Host::wait_job`] waits for a job of this process to end before it reads the
/// job again (for progress bars); the job's end wakes it at once.
const PROGRESS_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How often a job's watcher looks for a cancel request recorded by another process.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Finished jobs are kept this long (TimeBeforeRemoval).
pub const KEEP_FINISHED_MS: i64 = 5 * 60 * 1000;

/// How often a running job's PercentComplete reaches the repository.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Writes a job's PercentComplete without waiting for the disk: progress is advisory, and
/// `synchronous = NORMAL` in WAL mode still keeps the database consistent after a crash
/// (the next FULL commit makes the row durable).
fn persist_progress(conn: &Connection, job_id: &str, percent: u16) {
    let _ = conn.pragma_update(None, "synchronous", "NORMAL");
    let _ = conn.execute(
        "UPDATE jobs SET percent = ?2 WHERE id = ?1 AND percent < ?2",
        params![job_id, percent],
    );
    let _ = conn.pragma_update(None, "synchronous", "FULL");
}

/// What the work of a job sees.
pub struct JobCtx {
    host: Host,
    job_id: String,
    cancel: CancelToken,
    requested: Arc<AtomicU16>,
    cancellable: AtomicBool,
    /// PercentComplete as the work last reported it; the watcher thread persists it.
    percent: Arc<AtomicU16>,
}

impl JobCtx {
    pub fn host(&self) -> &Host {
        &self.host
    }
    pub fn job_id(&self) -> &str {
        &self.job_id
    }
    /// The token to pass to long cosnap-disk operations (flatten_all, …).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }
    /// `Err(Cancelled)` once a Terminate/Kill was requested (and the job is cancellable).
    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() && self.cancellable.load(Ordering::SeqCst) {
            return Err(HostError::Cancelled);
        }
        Ok(())
    }
    /// Sets PercentComplete (0..=100; it never goes down).
    ///
    /// Only an atomic store: copy threads call this per extent, and a database commit
    /// there would stall them (an fsync on ext4 flushes the export's dirty data with it).
    /// The job's watcher thread persists the value every [`PROGRESS_EVERY`].
    pub fn progress(&self, percent: u16) {
        self.percent.fetch_max(percent.min(100), Ordering::Relaxed);
    }
    /// After a point of no return (e.g. a merge started), the job stops being cancellable.
    pub fn set_cancellable(&self, cancellable: bool) {
        self.cancellable.store(cancellable, Ordering::SeqCst);
        let _ = self.host.db().execute(
            "UPDATE jobs SET cancellable = ?2 WHERE id = ?1",
            params![self.job_id, cancellable],
        );
    }
}

impl Work for JobCtx {
    fn check_cancel(&self) -> Result<()> {
        JobCtx::check_cancel(self)
    }

    fn progress(&self, percent: u16) {
        JobCtx::progress(self, percent)
    }

    fn job_id(&self) -> Option<&str> {
        Some(JobCtx::job_id(self))
    }

    fn cancel_token(&self) -> CancelToken {
        JobCtx::cancel_token(self)
    }

    fn set_cancellable(&self, cancellable: bool) {
        JobCtx::set_cancellable(self, cancellable)
    }
}

/// How a job shows itself (JobType, Name, Description) and whether a RequestStateChange
/// may cancel it.
pub struct JobDescription {
    pub job_type: u16,
    pub name: String,
    pub description: String,
    pub cancellable: bool,
}

impl JobDescription {
    /// A cancellable job.
    pub fn new(job_type: u16, name: &str, description: String) -> Self {
        JobDescription {
            job_type,
            name: name.to_string(),
            description,
            cancellable: true,
        }
    }
}

/// An element a job created, as its work returns it: (class, InstanceID).
pub fn created(class: &str, id: String) -> (String, String) {
    (class.to_string(), id)
}

/// Which return-code family a job's ErrorCode uses.
fn error_code_for(job_type: u16, e: &HostError) -> u32 {
    use crate::model::job_type::*;
    match job_type {
        DEFINE_COLLECTION | DESTROY_COLLECTION | RENAME_COLLECTION | ADD_MEMBER | REMOVE_MEMBER
        | DEFINE_VM | DESTROY_VM | EXPORT => e.msvm_code(),
        _ => e.dmtf_code(),
    }
}

impl Host {
    /// Marks a job whose process died Completed after recovery finished its work (an
    /// export past its commit point), replacing the "interrupted" recovery gave it.
    pub(crate) fn complete_recovered_job(&self, job_id: &str) -> Result<()> {
        mark_job_completed(&self.db(), job_id)
    }

    /// Runs a domain operation as a job: the one way the long operations (create, destroy,
    /// apply, convert, export) start. `operation` sees the host and the job only as
    /// [`Work`], so it never names the job runner.
    pub fn start_work<F>(&self, job: JobDescription, operation: F) -> Result<String>
    where
        F: FnOnce(&Host, &dyn Work) -> Result<Vec<(String, String)>> + Send + 'static,
    {
        self.start_job(
            job.job_type,
            &job.name,
            &job.description,
            job.cancellable,
            move |ctx| operation(ctx.host(), ctx),
        )
    }

    /// Records a job and runs `work` on a background thread. `work` returns the
    /// (class, id) of what it created (linked by Msvm_AffectedJobElement, ElementEffects 5).
    /// Returns the job's InstanceID at once (the method's 4096 + Job).
    pub fn start_job<F>(
        &self,
        job_type: u16,
        name: &str,
        description: &str,
        cancellable: bool,
        work: F,
    ) -> Result<String>
    where
        F: FnOnce(&JobCtx) -> Result<Vec<(String, String)>> + Send + 'static,
    {
        let id = new_guid();
        let (pid, start) = repo::own_identity();
        let now = now_ms();
        {
            let conn = self.db();
            let seq: i64 =
                conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs", [], |r| {
                    r.get(0)
                })?;
            conn.execute(
                "INSERT INTO jobs (id, job_type, name, description, state, percent, submitted_ms, start_ms, last_change_ms,
                 cancellable, owner_pid, owner_start, seq) VALUES (?1, ?2, ?3, ?4, 4, 0, ?5, ?5, ?5, ?6, ?7, ?8, ?9)",
                params![id, job_type, name, description, now, cancellable, pid, start as i64, seq],
            )?;
        }
        let cancel = CancelToken::new();
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), cancel.clone());
        let ctx = JobCtx {
            host: self.clone(),
            job_id: id.clone(),
            cancel: cancel.clone(),
            requested: Arc::new(AtomicU16::new(0)),
            cancellable: AtomicBool::new(cancellable),
            percent: Arc::new(AtomicU16::new(0)),
        };
        // Watcher: turns a cancel request recorded by another process into the token. It
        // ends as soon as the job does (its channel closes), and the job thread joins it.
        let (done, job_ended) = std::sync::mpsc::channel::<()>();
        let watcher = {
            let host = self.clone();
            let id = id.clone();
            let requested = ctx.requested.clone();
            let percent = ctx.percent.clone();
            std::thread::spawn(move || {
                let mut persisted = 0u16;
                let mut last_persist = Instant::now();
                while job_ended.recv_timeout(WATCH_EVERY)
                    == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    let now_percent = percent.load(Ordering::Relaxed);
                    if now_percent > persisted && last_persist.elapsed() >= PROGRESS_EVERY {
                        // The job may have ended meanwhile; `percent < ?` keeps 100 at 100.
                        persist_progress(&host.db(), &id, now_percent);
                        persisted = now_percent;
                        last_persist = Instant::now();
                    }
                    let req: Option<u16> = host
                        .db()
                        .query_row(
                            "SELECT cancel_requested FROM jobs WHERE id = ?1",
                            [&id],
                            |r| r.get(0),
                        )
                        .optional()
                        .ok()
                        .flatten();
                    if let Some(r) = req.filter(|r| *r != 0) {
                        requested.store(r, Ordering::SeqCst);
                        cancel.cancel();
                    }
                }
            })
        };
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                let started = Instant::now();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ctx)))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "internal error".into());
                        Err(HostError::Failed(format!(
                            "the job failed unexpectedly: {msg}"
                        )))
                    });
                ctx.host.finish_job(&ctx, outcome, started);
                drop(ended_tx);
                drop(done);
                let _ = watcher.join();
            })
            .map_err(HostError::Io)?;
        self.keep_job_thread(&id, JobThread { worker, ended });
        Ok(id)
    }

    /// Keeps a job thread's handle for [`Host::wait_job_with`], dropping the handles of
    /// threads that ended unwaited (a server never waits).
    fn keep_job_thread(&self, id: &str, thread: JobThread) {
        let mut threads = self
            .inner
            .job_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        threads.retain(|_, t| !t.worker.is_finished());
        threads.insert(id.to_string(), thread);
    }

    /// The thread of job `id` if this process runs it (and nobody else waits for it).
    fn take_job_thread(&self, id: &str) -> Option<JobThread> {
        self.inner
            .job_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    fn finish_job(&self, ctx: &JobCtx, outcome: Result<Vec<(String, String)>>, _started: Instant) {
        let now = now_ms();
        let conn = self.db();
        let job_type: u16 = conn
            .query_row(
                "SELECT job_type FROM jobs WHERE id = ?1",
                [&ctx.job_id],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let res = match outcome {
            Ok(affected) => {
                for (class, element) in &affected {
                    let _ = conn.execute(
                        "INSERT INTO job_elements (job_id, class_name, element_id, effect) VALUES (?1, ?2, ?3, 5)",
                        params![ctx.job_id, class, element],
                    );
                }
                conn.execute(
                    "UPDATE jobs SET state = 7, percent = 100, last_change_ms = ?2, finished_ms = ?2 WHERE id = ?1",
                    params![ctx.job_id, now],
                )
            }
            Err(HostError::Cancelled) => {
                let requested = ctx.requested.load(Ordering::SeqCst);
                let state = if requested == 5 {
                    job_state::KILLED
                } else {
                    job_state::TERMINATED
                };
                conn.execute(
                    "UPDATE jobs SET state = ?3, last_change_ms = ?2, finished_ms = ?2, error_code = 0,
                     error_description = 'cancelled at the client''s request; the work was rolled back',
                     error_summary = 'cancelled' WHERE id = ?1",
                    params![ctx.job_id, now, state],
                )
            }
            Err(e) => {
                let code = error_code_for(job_type, &e);
                let summary: String = e.to_string().chars().take(120).collect();
                conn.execute(
                    "UPDATE jobs SET state = 10, last_change_ms = ?2, finished_ms = ?2, error_code = ?3,
                     error_description = ?4, error_summary = ?5 WHERE id = ?1",
                    params![ctx.job_id, now, code, e.to_string(), summary],
                )
            }
        };
        if let Err(e) = res {
            tracing::error!(job = ctx.job_id, "could not record the job's end: {e}");
        }
        drop(conn);
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ctx.job_id);
    }

    /// Ids of the jobs running in this process (for `cosnap serve`'s graceful shutdown:
    /// it lets them finish or cancels them before exiting).
    pub fn running_jobs(&self) -> Vec<String> {
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        running.keys().cloned().collect()
    }

    pub fn job(&self, id: &str) -> Result<Job> {
        let conn = self.db_read();
        load_job(&conn, &crate::util::norm_id(id))
    }

    /// Jobs not yet purged, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let conn = self.db();
        purge_expired(&conn)?;
        let ids: Vec<String> = {
            let mut stmt = conn.prepare("SELECT id FROM jobs ORDER BY seq")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        ids.iter().map(|id| load_job(&conn, id)).collect()
    }

    /// Waits until the job ends and returns it (for in-process callers and the CLI).
    pub fn wait_job(&self, id: &str) -> Result<Job> {
        self.wait_job_with(id, |_| {})
    }

    /// [`Host::wait_job`] with a callback on each poll (progress bars).
    ///
    /// A job this process runs wakes the wait as it ends (no polling delay added to every
    /// command that waits), and its thread is joined, so its handle on the repository is
    /// gone before the caller goes on (or exits). A job of another process is polled.
    pub fn wait_job_with(&self, id: &str, mut on_poll: impl FnMut(&Job)) -> Result<Job> {
        use std::sync::mpsc::RecvTimeoutError;
        let ours = self.take_job_thread(&crate::util::norm_id(id));
        let mut ending = ours.as_ref().map(|t| &t.ended);
        loop {
            let job = self.job(id)?;
            on_poll(&job);
            if job.is_finished() {
                if let Some(thread) = ours {
                    let _ = thread.worker.join();
                }
                return Ok(job);
            }
            match ending.map(|ended| ended.recv_timeout(PROGRESS_POLL)) {
                // The job thread is done: read the job again at once, and poll from then on
                // (should its end not have been recorded).
                Some(Err(RecvTimeoutError::Disconnected)) => ending = None,
                Some(_) => {}
                None => std::thread::sleep(POLL),
            }
        }
    }

    /// RequestStateChange on a job: 4 Terminate or 5 Kill stop the work and roll it back.
    /// Returns the method's code: 4096 transition started, 4097 invalid state transition
    /// (the job already ended, or passed its point of no return), 5 invalid parameter.
    pub fn request_job_state(&self, id: &str, requested: u16) -> Result<u32> {
        let job = self.job(id)?;
        if requested != 4 && requested != 5 {
            return Ok(concrete_job::INVALID_PARAMETER);
        }
        if job.is_finished() || !job.cancellable {
            return Ok(concrete_job::INVALID_STATE_TRANSITION);
        }
        self.db().execute(
            "UPDATE jobs SET cancel_requested = ?2 WHERE id = ?1",
            params![job.id, requested],
        )?;
        if let Some(token) = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job.id)
        {
            token.cancel();
        }
        Ok(concrete_job::TRANSITION_STARTED)
    }
}

pub(crate) fn purge_expired(conn: &Connection) -> Result<()> {
    let cutoff = now_ms() - KEEP_FINISHED_MS;
    conn.execute("DELETE FROM job_elements WHERE job_id IN (SELECT id FROM jobs WHERE finished_ms IS NOT NULL AND finished_ms < ?1)", [cutoff])?;
    conn.execute(
        "DELETE FROM jobs WHERE finished_ms IS NOT NULL AND finished_ms < ?1",
        [cutoff],
    )?;
    Ok(())
}

fn load_job(conn: &Connection, id: &str) -> Result<Job> {
    let mut job = conn
        .query_row(
            "SELECT id, job_type, name, description, state, percent, submitted_ms, start_ms, last_change_ms, finished_ms,
             error_code, error_description, error_summary, cancellable, delete_on_completion FROM jobs WHERE id = ?1",
            [id],
            |r| {
                Ok(Job {
                    id: r.get(0)?,
                    job_type: r.get(1)?,
                    name: r.get(2)?,
                    description: r.get(3)?,
                    state: r.get(4)?,
                    percent: r.get(5)?,
                    submitted_ms: r.get(6)?,
                    start_ms: r.get(7)?,
                    last_change_ms: r.get(8)?,
                    finished_ms: r.get(9)?,
                    error_code: r.get(10)?,
                    error_description: r.get(11)?,
                    error_summary: r.get(12)?,
                    cancellable: r.get(13)?,
                    delete_on_completion: r.get(14)?,
                    affected: vec![],
                })
            },
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no job with id {id}")))?;
    let mut stmt =
        conn.prepare("SELECT class_name, element_id FROM job_elements WHERE job_id = ?1")?;
    job.affected = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(job)
}

/// Marks a job of a dead process Completed: recovery found its work done (an export past
/// its commit point, or recorded), so "interrupted" would hide a finished package.
pub(crate) fn mark_job_completed(conn: &Connection, job_id: &str) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET state = 7, percent = 100, error_code = 0, error_description = NULL,
         error_summary = NULL, last_change_ms = ?2, finished_ms = ?2 WHERE id = ?1",
        params![job_id, now_ms()],
    )?;
    Ok(())
}
