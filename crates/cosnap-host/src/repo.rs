//! The embedded repository: SQLite in WAL mode at `<data-dir>/cosnap.db`, versioned
//! migrations (`PRAGMA user_version`), and the repository write lock.
//!
//! Concurrency: a CLI process and a server process may share one data directory. Every
//! state change is one transaction; SQLite's `busy_timeout` makes readers and writers
//! wait instead of failing. Operations that touch disk files also hold an exclusive
//! `flock` on `<data-dir>/lock` from before their first file operation until their last
//! (see [`RepoLock`]), so no guest write, other snapshot operation or start-up recovery
//! interleaves with them. `flock` locks belong to the open file description, so two
//! threads of one process exclude each other the same way two processes do.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{HostError, Result};

/// Schema migrations; index + 1 = the `user_version` after applying it. Never edit a
/// shipped entry: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    created TEXT NOT NULL,
    -- VSSD InstanceID of the snapshot the VM currently descends from (Hyper-V's Parent).
    parent_vssd TEXT,
    seq INTEGER NOT NULL
);
CREATE TABLE vm_disks (
    vm_id TEXT NOT NULL REFERENCES vms(id),
    idx INTEGER NOT NULL,
    base_path TEXT NOT NULL,
    base_format TEXT NOT NULL,
    active_layer TEXT NOT NULL,
    disk_guid TEXT NOT NULL,
    PRIMARY KEY (vm_id, idx)
);
CREATE TABLE vm_nics (
    vm_id TEXT NOT NULL REFERENCES vms(id),
    idx INTEGER NOT NULL,
    mac TEXT NOT NULL,
    switch_name TEXT,
    PRIMARY KEY (vm_id, idx)
);
-- Every layer file the repository knows, with its parent in the chain. owned = 1 for
-- layers cosnap created (it may delete them), 0 for a user's base disk (never deleted).
CREATE TABLE layers (
    path TEXT PRIMARY KEY,
    vm_id TEXT NOT NULL,
    disk_idx INTEGER NOT NULL,
    parent TEXT,
    format TEXT NOT NULL,
    owned INTEGER NOT NULL
);
CREATE INDEX layers_parent ON layers(parent);
CREATE TABLE collections (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    created TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE collection_members (
    collection_id TEXT NOT NULL REFERENCES collections(id),
    member_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (collection_id, member_id)
);
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    collection_id TEXT NOT NULL,
    name TEXT NOT NULL,
    snapshot_type INTEGER NOT NULL,
    created INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE snapshot_vms (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
    vm_id TEXT NOT NULL,
    vssd_id TEXT NOT NULL UNIQUE,
    parent_vssd TEXT,
    settings TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, vm_id)
);
CREATE TABLE snapshot_disks (
    snapshot_id TEXT NOT NULL,
    vm_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    layer TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, vm_id, idx)
);
CREATE TABLE refpoints (
    id TEXT PRIMARY KEY,
    collection_id TEXT NOT NULL,
    name TEXT NOT NULL,
    rp_type INTEGER NOT NULL,
    consistency INTEGER NOT NULL,
    created INTEGER NOT NULL,
    from_snapshot TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE refpoint_vms (
    refpoint_id TEXT NOT NULL REFERENCES refpoints(id),
    vm_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    settings TEXT NOT NULL,
    PRIMARY KEY (refpoint_id, vm_id)
);
CREATE TABLE refpoint_disks (
    refpoint_id TEXT NOT NULL,
    vm_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    layer TEXT NOT NULL,
    disk_identifier TEXT NOT NULL,
    rct_id TEXT NOT NULL,
    PRIMARY KEY (refpoint_id, vm_id, idx)
);
-- Marks "an export reads this snapshot / reference point" (owner = job + process).
CREATE TABLE in_use (
    object_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start INTEGER NOT NULL,
    PRIMARY KEY (object_id, job_id)
);
CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    job_id TEXT,
    package_dir TEXT NOT NULL,
    created TEXT NOT NULL,
    -- JSON array of {vm_id, disk_index, path}
    disks TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    job_type INTEGER NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    state INTEGER NOT NULL,
    percent INTEGER NOT NULL,
    submitted_ms INTEGER NOT NULL,
    start_ms INTEGER,
    last_change_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_description TEXT,
    error_summary TEXT,
    cancellable INTEGER NOT NULL,
    delete_on_completion INTEGER NOT NULL DEFAULT 1,
    -- 0 none, 4 Terminate or 5 Kill requested (possibly by another process).
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER NOT NULL,
    owner_start INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
-- Msvm_AffectedJobElement rows: (job, class, id) of what a job created or touched.
CREATE TABLE job_elements (
    job_id TEXT NOT NULL,
    class_name TEXT NOT NULL,
    element_id TEXT NOT NULL,
    effect INTEGER NOT NULL
);
-- Intent journal: one row per operation that touches disk files (see journal.rs).
CREATE TABLE journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    phase TEXT NOT NULL,
    plan TEXT NOT NULL,
    job_id TEXT
);
"#,
    r#"
-- How a VM boots (kernel NULL = the firmware boots disk 0) and its COM2 socket (running VMs).
CREATE TABLE vm_boot (
    vm_id TEXT PRIMARY KEY,
    kernel TEXT,
    initrd TEXT,
    cmdline TEXT,
    com2 TEXT
);
"#,
    r#"
-- Running VMs: how long the group stood paused for a live snapshot (NULL: offline).
ALTER TABLE snapshots ADD COLUMN pause_window_us INTEGER;
"#,
    // 4: indexes for lookups by foreign key and by name, so that association and key
    // lookups cost what they return (issue 13). `vssd_id` is compared without case.
    r#"
CREATE INDEX vms_name ON vms(name);
CREATE INDEX collections_name ON collections(name);
CREATE INDEX collection_members_member ON collection_members(member_id);
CREATE INDEX snapshots_collection ON snapshots(collection_id);
CREATE INDEX snapshot_vms_vm ON snapshot_vms(vm_id);
CREATE INDEX snapshot_vms_vssd_nocase ON snapshot_vms(vssd_id COLLATE NOCASE);
CREATE INDEX refpoints_collection ON refpoints(collection_id);
CREATE INDEX refpoint_vms_vm ON refpoint_vms(vm_id);
CREATE INDEX job_elements_job ON job_elements(job_id);
CREATE INDEX job_elements_element ON job_elements(element_id);
"#,
    // 5: the persistent dirty bitmap (and the layer file holding it) that tracks a running
    // disk's changes since a reference point; NULL when the disk was not tracked.
    r#"
ALTER TABLE refpoint_disks ADD COLUMN bitmap_layer TEXT;
ALTER TABLE refpoint_disks ADD COLUMN bitmap TEXT;
"#,
    // 6: enumerations read owner rows a page at a time by `seq` (keyset pages), and a
    // per-VM reference point is found by its InstanceID, compared without case.
    r#"
CREATE INDEX vms_seq ON vms(seq);
CREATE INDEX collections_seq ON collections(seq);
CREATE INDEX snapshots_seq ON snapshots(seq);
CREATE INDEX refpoints_seq ON refpoints(seq);
CREATE INDEX jobs_seq ON jobs(seq);
CREATE INDEX refpoint_vms_instance_nocase ON refpoint_vms(instance_id COLLATE NOCASE);
"#,
];

/// A read-only connection to the repository (after [`open_db`] created and migrated it).
/// In WAL mode its reads see the last committed state and never wait for the writer.
pub fn open_reader(data_dir: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        data_dir.join("cosnap.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(60))?;
    // Row loading runs the same few statements for every object (rows.rs caches them).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens (creating if needed) the repository database and brings its schema up to date.
pub fn open_db(data_dir: &Path) -> Result<Connection> {
    std::fs::create_dir_all(data_dir)?;
    let db = data_dir.join("cosnap.db");
    // Created owner-only before SQLite sees it: SQLite gives the -wal and -shm files it
    // creates later the database file's mode.
    create_private(&db)?;
    let conn = Connection::open(&db)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    // Row loading runs the same few statements for every object (rows.rs caches them).
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    for side in ["cosnap.db-wal", "cosnap.db-shm"] {
        crate::modes::make_private_if_present(&data_dir.join(side))?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(HostError::Failed(format!(
            "{}: repository schema version {version} is newer than this cosnap ({})",
            data_dir.display(),
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        // BEGIN IMMEDIATE semantics are not needed: a concurrent migrator fails the
        // user_version check below and retries nothing harmful (CREATE fails → error).
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// The repository write lock: an exclusive `flock` on `<data-dir>/lock`, released on drop.
pub struct RepoLock {
    _file: File,
}

impl RepoLock {
    pub fn acquire(data_dir: &Path) -> Result<RepoLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(crate::modes::PRIVATE_FILE)
            .open(&path)?;
        loop {
            // SAFETY: flock on a valid, owned descriptor.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(HostError::Io(err));
            }
        }
        Ok(RepoLock { _file: file })
    }
}

/// This process's identity as stored with jobs and in-use marks: pid + start time (clock
/// ticks since boot, field 22 of `/proc/<pid>/stat`), so a recycled pid is not mistaken for
/// the owner.
pub fn process_identity(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn own_identity() -> (u32, u64) {
    let pid = std::process::id();
    (pid, process_identity(pid).unwrap_or(0))
}

/// True when the process that recorded (pid, start) still runs.
pub fn owner_alive(pid: u32, start: u64) -> bool {
    process_identity(pid) == Some(start)
}

/// Directory holding the layers cosnap creates for one VM.
/// Creates `path` owner-only (0600) if it does not exist, and makes it owner-only if it
/// does (repositories created before modes were enforced).
pub(crate) fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::modes::PRIVATE_FILE)
        .open(path)?;
    crate::modes::make_private_file(path)
}

pub fn vm_disk_dir(data_dir: &Path, vm_id: &str) -> PathBuf {
    data_dir.join("disks").join(vm_id)
}
