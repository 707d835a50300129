//! [`Host`] itself: the repository handle over one data directory — open, the repository
//! lock, the database connections and the trust options. The operations on each resource
//! live in their own rooms (`vms`, `collections`, `snapshots`, `refpoints`, `layers`,
//! `recovery`, `export_records`), each an `impl Host` block.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cosnap_disk::{CancelToken, LayerSpec};
use rusqlite::Connection;

use crate::error::Result;
use crate::options::HostOptions;
use crate::repo::{self, RepoLock};

/// Kept at its old path for callers that name it here.
pub use crate::rows::disk_instance_id;

/// The cosnap host over one data directory. Cheap to clone; clones share one connection
/// and the table of running jobs. See the crate docs for the API overview.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) data_dir: PathBuf,
    /// Trust configuration, roots canonical.
    pub(crate) options: HostOptions,
    /// A read-only connection for the hot read path (job polling): in WAL mode it never
    /// waits for the writer, whose commits fsync (FULL) and can take long while an export
    /// loads the disk. Declared before `conn` so it closes first: the last connection to
    /// close checkpoints and removes the WAL, which a read-only one cannot do, and a WAL
    /// left behind is read whole by the next process that opens the repository.
    pub(crate) reader: Mutex<Connection>,
    pub(crate) conn: Mutex<Connection>,
    pub(crate) host_name: String,
    /// Cancel tokens of jobs running in this process.
    pub(crate) running: Mutex<HashMap<String, CancelToken>>,
    /// The threads of jobs started by this process, joined by whoever waits for the job
    /// (so a command that waits leaves no thread holding the repository open at exit).
    pub(crate) job_threads: Mutex<HashMap<String, JobThread>>,
}

/// The thread of a job this process runs, and the channel that closes when the job has
/// recorded its end.
pub(crate) struct JobThread {
    pub(crate) worker: std::thread::JoinHandle<()>,
    pub(crate) ended: std::sync::mpsc::Receiver<()>,
}

impl Host {
    /// Opens (creating if needed) the repository in `data_dir`, applies migrations, and
    /// recovers from any interrupted operation (journal replay / roll-back, interrupted
    /// jobs marked Exception, stale in-use marks cleared, expired jobs purged).
    ///
    /// # Example
    ///
    /// ```
    /// use cosnap_host::Host;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let host = Host::open(dir.path().join("data"))?;
    /// let group = host.define_collection("web tier", None, 0)?;
    /// assert_eq!(host.collection("web tier")?.id, group.id);
    /// assert!(host.vms()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Host> {
        Self::open_with(data_dir, HostOptions::default())
    }

    /// [`Host::open`] with the process's trust configuration (storage and export roots,
    /// export mode; see [`HostOptions`]).
    pub fn open_with(data_dir: impl AsRef<Path>, options: HostOptions) -> Result<Host> {
        let data_dir = crate::modes::create_private_dir(data_dir.as_ref())?;
        let options = HostOptions {
            storage_roots: crate::options::canonical_roots(&options.storage_roots, "storage"),
            export_roots: crate::options::canonical_roots(&options.export_roots, "export"),
            ..options
        };
        let conn = repo::open_db(&data_dir)?;
        let reader = repo::open_reader(&data_dir)?;
        let host = Host {
            inner: Arc::new(Inner {
                data_dir,
                options,
                conn: Mutex::new(conn),
                reader: Mutex::new(reader),
                host_name: crate::util::host_name(),
                running: Mutex::new(HashMap::new()),
                job_threads: Mutex::new(HashMap::new()),
            }),
        };
        host.recover_at_open()?;
        Ok(host)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The trust configuration the host was opened with (roots canonical).
    pub fn options(&self) -> &HostOptions {
        &self.inner.options
    }

    /// The chain of layer `top` as the repository records it (top first): what every
    /// open of a repository layer uses (see [`crate::chains`]).
    pub fn disk_chain(&self, top: &Path) -> Result<Vec<LayerSpec>> {
        crate::chains::recorded_chain(&self.db(), top)
    }

    /// The host name used in object paths and service keys.
    pub fn host_name(&self) -> &str {
        &self.inner.host_name
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The read-only connection (see [`Inner::reader`]); for reads that need no lock
    /// shared with a write.
    pub(crate) fn db_read(&self) -> MutexGuard<'_, Connection> {
        self.inner.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the repository write lock (see [`repo::RepoLock`]).
    pub(crate) fn lock(&self) -> Result<RepoLock> {
        RepoLock::acquire(&self.inner.data_dir)
    }
}
