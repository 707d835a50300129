//! [`Host`]: the repository handle and every operation on VMs, collections, snapshots,
//! reference points and jobs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cosnap_disk::{CancelToken, Format, LayerSpec};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{HostError, Result};
use crate::journal::{self, Plan, Step};
use crate::model::*;
use crate::options::HostOptions;
use crate::repo::{self, RepoLock};
use crate::util::{crash_point, new_guid, norm_id, now_ms, rfc3339};

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
    pub(crate) conn: Mutex<Connection>,
    /// A read-only connection for the hot read path (job polling): in WAL mode it never
    /// waits for the writer, whose commits fsync (FULL) and can take long while an export
    /// loads the disk.
    pub(crate) reader: Mutex<Connection>,
    pub(crate) host_name: String,
    /// Cancel tokens of jobs running in this process.
    pub(crate) running: Mutex<HashMap<String, CancelToken>>,
}

fn fmt_of(text: &str) -> Format {
    Format::from_name(text).unwrap_or(Format::Raw)
}

fn p2s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Extension of a differencing child of a layer in `parent_format`.
fn child_ext(parent_format: Format) -> (&'static str, Format) {
    match parent_format {
        Format::Vhdx => ("avhdx", Format::Vhdx),
        _ => ("qcow2", Format::Qcow2),
    }
}

impl Host {
    /// Opens (creating if needed) the repository in `data_dir`, applies migrations, and
    /// recovers from any interrupted operation (journal replay / roll-back, interrupted
    /// jobs marked Exception, stale in-use marks cleared, expired jobs purged).
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
            ..options.clone()
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
            }),
        };
        host.recover()?;
        crate::export::recover_interrupted(&host);
        Ok(host)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The trust configuration the host was opened with (roots canonical).
    pub fn options(&self) -> &HostOptions {
        &self.inner.options
    }

    /// Checks the disk images of a VM defined over the API (see
    /// [`crate::options::HostOptions::storage_roots`]) and replaces each path by what it
    /// resolved to, so the definition records the file that was checked. Access Denied when
    /// one lies outside the storage roots.
    pub fn check_api_disks(&self, spec: &mut VmSpec) -> Result<()> {
        for d in &mut spec.disks {
            d.path = crate::options::check_api_disk_path(
                &d.path,
                &self.inner.options.storage_roots,
                &self.inner.data_dir,
            )?;
        }
        Ok(())
    }

    /// Creates `<data-dir>/disks/<vm>/`, the directory of a new layer `child`, owner-only.
    fn create_layer_dir(&self, child: &Path) -> Result<()> {
        crate::modes::create_private_dir(&self.inner.data_dir.join("disks"))?;
        crate::modes::create_private_dir(child.parent().unwrap_or(Path::new(".")))?;
        Ok(())
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

    fn recover(&self) -> Result<()> {
        let _lock = self.lock()?;
        let conn = self.db();
        self.recover_live_creates(&conn)?;
        journal::recover(&conn)?;
        let now = now_ms();
        // Jobs whose owner process is gone.
        let orphans: Vec<(String, u32, u64)> = {
            let mut stmt =
                conn.prepare("SELECT id, owner_pid, owner_start FROM jobs WHERE state IN (2,3,4)")?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect::<Result<_, _>>()?
        };
        for (id, pid, start) in orphans {
            if !repo::owner_alive(pid, start) {
                conn.execute(
                    "UPDATE jobs SET state = 10, error_code = 2, error_description = 'interrupted',
                     error_summary = 'interrupted: the process running the job ended; its effects were rolled back or completed',
                     last_change_ms = ?2, finished_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
            }
        }
        let marks: Vec<(String, String, u32, i64)> = {
            let mut stmt =
                conn.prepare("SELECT object_id, job_id, owner_pid, owner_start FROM in_use")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?
        };
        for (obj, job, pid, start) in marks {
            if !repo::owner_alive(pid, start as u64) {
                conn.execute(
                    "DELETE FROM in_use WHERE object_id = ?1 AND job_id = ?2",
                    params![obj, job],
                )?;
            }
        }
        crate::jobs::purge_expired(&conn)?;
        Ok(())
    }

    // ------------------------------------------------------------------ VMs

    /// Defines a VM over existing disk images (its base disks; never modified by cosnap
    /// except by the merge of a destroyed first snapshot). Disks and nics keep their order.
    pub fn define_vm(&self, spec: &VmSpec) -> Result<Vm> {
        if spec.name.trim().is_empty() {
            return Err(HostError::invalid("a VM needs a non-empty name"));
        }
        if spec.cpus == 0 || spec.cpus > 1024 {
            return Err(HostError::invalid(format!(
                "cpus must be 1..=1024, got {}",
                spec.cpus
            )));
        }
        if spec.memory_mb == 0 || spec.memory_mb > 64 * 1024 * 1024 {
            return Err(HostError::invalid(format!(
                "memory must be 1 MiB..64 TiB, got {} MB",
                spec.memory_mb
            )));
        }
        for nic in &spec.nics {
            if !valid_mac(&nic.mac) {
                return Err(HostError::invalid(format!(
                    "'{}' is not a MAC address (12 hex digits, ':' or '-' optional)",
                    nic.mac
                )));
            }
        }
        let id = match &spec.id {
            Some(id) => {
                uuid::Uuid::parse_str(id.trim_matches(['{', '}']))
                    .map_err(|_| HostError::invalid(format!("VM id '{id}' is not a GUID")))?;
                norm_id(id)
            }
            None => new_guid(),
        };
        let mut disks = Vec::new();
        for d in &spec.disks {
            let path = d.path.canonicalize().map_err(|e| {
                HostError::not_found(format!("disk image {}: {e}", d.path.display()))
            })?;
            if !path.is_file() {
                return Err(HostError::invalid(format!(
                    "disk image {} is not a file",
                    path.display()
                )));
            }
            let format = crate::chains::base_disk_format(&path, d.format)?;
            disks.push((path, format));
        }
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx
            .query_row("SELECT 1 FROM vms WHERE id = ?1", [&id], |_| Ok(()))
            .optional()?
            .is_some()
        {
            return Err(HostError::AlreadyExists(format!(
                "a VM with id {id} exists"
            )));
        }
        for (path, _) in &disks {
            if let Some(owner) = tx
                .query_row(
                    "SELECT vm_id FROM layers WHERE path = ?1",
                    [p2s(path)],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
            {
                return Err(HostError::InUse(format!(
                    "disk {} already belongs to VM {owner}",
                    path.display()
                )));
            }
        }
        let seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM vms", [], |r| {
            r.get(0)
        })?;
        tx.execute(
            "INSERT INTO vms (id, name, cpus, memory_mb, created, parent_vssd, seq) VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
            params![id, spec.name, spec.cpus, spec.memory_mb as i64, rfc3339(now_ms()), seq],
        )?;
        for (i, (path, format)) in disks.iter().enumerate() {
            tx.execute(
                "INSERT INTO vm_disks (vm_id, idx, base_path, base_format, active_layer, disk_guid) VALUES (?1, ?2, ?3, ?4, ?3, ?5)",
                params![id, i as i64, p2s(path), format.name(), new_guid()],
            )?;
            tx.execute(
                "INSERT INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, NULL, ?4, 0)",
                params![p2s(path), id, i as i64, format.name()],
            )?;
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            tx.execute(
                "INSERT INTO vm_nics (vm_id, idx, mac, switch_name) VALUES (?1, ?2, ?3, ?4)",
                params![id, i as i64, normalize_mac(&nic.mac), nic.switch_name],
            )?;
        }
        tx.commit()?;
        load_vm(&conn, &id)
    }

    /// A VM by id or (unique) name.
    pub fn vm(&self, id_or_name: &str) -> Result<Vm> {
        let conn = self.db();
        let id = resolve(&conn, "vms", id_or_name, "VM")?;
        load_vm(&conn, &id)
    }

    pub fn vms(&self) -> Result<Vec<Vm>> {
        let conn = self.db();
        let ids = ids(&conn, "SELECT id FROM vms ORDER BY seq")?;
        ids.iter().map(|id| load_vm(&conn, id)).collect()
    }

    /// Destroys a VM: removes it from its collections and deletes the layers cosnap created
    /// for it. Refused (in use) while a snapshot or reference point still holds its disks —
    /// destroy those first (Hyper-V would delete them with the VM; we prefer not to lose
    /// backups silently). The user's base disks are left in place.
    pub fn destroy_vm(&self, id_or_name: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut conn = self.db();
        let id = resolve(&conn, "vms", id_or_name, "VM")?;
        if self.running_vm(&id).is_some() {
            return Err(HostError::InvalidState(format!(
                "VM {id} is running; stop it first"
            )));
        }
        let snaps: i64 = conn.query_row(
            "SELECT COUNT(*) FROM snapshot_vms WHERE vm_id = ?1",
            [&id],
            |r| r.get(0),
        )?;
        let rps: i64 = conn.query_row(
            "SELECT COUNT(*) FROM refpoint_vms WHERE vm_id = ?1",
            [&id],
            |r| r.get(0),
        )?;
        if snaps + rps > 0 {
            return Err(HostError::InUse(format!(
                "VM {id} is part of {snaps} snapshot(s) and {rps} reference point(s); destroy them first"
            )));
        }
        let owned: Vec<PathBuf> = {
            let mut stmt =
                conn.prepare("SELECT path FROM layers WHERE vm_id = ?1 AND owned = 1")?;
            stmt.query_map([&id], |r| r.get::<_, String>(0))?
                .map(|r| r.map(PathBuf::from))
                .collect::<Result<_, _>>()?
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for table in ["vm_disks", "vm_nics", "layers", "vm_boot"] {
            tx.execute(&format!("DELETE FROM {table} WHERE vm_id = ?1"), [&id])?;
        }
        tx.execute("DELETE FROM collection_members WHERE member_id = ?1", [&id])?;
        tx.execute("DELETE FROM vms WHERE id = ?1", [&id])?;
        let plan = Plan::Release {
            steps: owned
                .into_iter()
                .map(|path| Step::Delete { path })
                .collect(),
        };
        let jid = journal::insert(&tx, "destroy-vm", "committed", &plan, None)?;
        tx.commit()?;
        if let Plan::Release { steps } = &plan {
            journal::run_steps(steps)?;
        }
        journal::remove(&conn, jid)?;
        let _ = std::fs::remove_dir(repo::vm_disk_dir(&self.inner.data_dir, &id));
        Ok(())
    }

    /// A guest write: `len` bytes of `pattern` at `offset` of disk `index`'s active layer,
    /// under the repository lock so it never interleaves with a snapshot operation.
    pub fn write_guest(
        &self,
        vm: &str,
        index: u32,
        offset: u64,
        len: u64,
        pattern: u8,
    ) -> Result<()> {
        let _lock = self.lock()?;
        let vm = self.vm(vm)?;
        let disk = vm.disks.get(index as usize).ok_or_else(|| {
            HostError::invalid(format!(
                "VM {} has {} disk(s); no disk {index}",
                vm.id,
                vm.disks.len()
            ))
        })?;
        cosnap_disk::write_pattern_to(&self.disk_chain(&disk.path)?, offset, len, pattern)?;
        Ok(())
    }

    // ------------------------------------------------------------------ collections

    /// DefineCollection. `id` = caller-chosen CollectionID (a GUID; `None` = fresh);
    /// `kind` 0 = VM collection, 1 = collection of collections.
    pub fn define_collection(&self, name: &str, id: Option<&str>, kind: u16) -> Result<Collection> {
        if name.trim().is_empty() {
            return Err(HostError::invalid("a collection needs a non-empty name"));
        }
        if kind > COLLECTION_OF_COLLECTIONS {
            return Err(HostError::invalid(format!(
                "collection Type {kind} is not 0 (VMs) or 1 (collections)"
            )));
        }
        let id = match id.map(str::trim).filter(|s| !s.is_empty()) {
            Some(id) => {
                uuid::Uuid::parse_str(id.trim_matches(['{', '}'])).map_err(|_| {
                    HostError::invalid(format!("collection Id '{id}' is not a GUID"))
                })?;
                norm_id(id)
            }
            None => new_guid(),
        };
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for table in ["collections", "snapshots", "refpoints", "vms"] {
            if tx
                .query_row(
                    &format!("SELECT 1 FROM {table} WHERE id = ?1"),
                    [&id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            {
                return Err(HostError::AlreadyExists(format!(
                    "an object with id {id} exists"
                )));
            }
        }
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM collections",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO collections (id, name, kind, created, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, kind, rfc3339(now_ms()), seq],
        )?;
        tx.commit()?;
        load_collection(&conn, &id)
    }

    pub fn collection(&self, id_or_name: &str) -> Result<Collection> {
        let conn = self.db();
        let id = resolve(&conn, "collections", id_or_name, "collection")?;
        load_collection(&conn, &id)
    }

    pub fn collections(&self) -> Result<Vec<Collection>> {
        let conn = self.db();
        let ids = ids(&conn, "SELECT id FROM collections ORDER BY seq")?;
        ids.iter().map(|id| load_collection(&conn, id)).collect()
    }

    pub fn rename_collection(&self, id_or_name: &str, new_name: &str) -> Result<Collection> {
        if new_name.trim().is_empty() {
            return Err(HostError::invalid("NewName must not be empty"));
        }
        let conn = self.db();
        let id = resolve(&conn, "collections", id_or_name, "collection")?;
        conn.execute(
            "UPDATE collections SET name = ?2 WHERE id = ?1",
            params![id, new_name],
        )?;
        load_collection(&conn, &id)
    }

    /// DestroyCollection. Refused (invalid state) while snapshot collections or reference
    /// points of it exist: destroying them is a separate, explicit step. Memberships of the
    /// collection in collections of collections are removed.
    pub fn destroy_collection(&self, id_or_name: &str) -> Result<()> {
        let mut conn = self.db();
        let id = resolve(&conn, "collections", id_or_name, "collection")?;
        let n: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM snapshots WHERE collection_id = ?1) + (SELECT COUNT(*) FROM refpoints WHERE collection_id = ?1)",
            [&id],
            |r| r.get(0),
        )?;
        if n > 0 {
            return Err(HostError::state(format!(
                "collection {id} has {n} snapshot(s)/reference point(s); destroy them first"
            )));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM collection_members WHERE collection_id = ?1 OR member_id = ?1",
            [&id],
        )?;
        tx.execute("DELETE FROM collections WHERE id = ?1", [&id])?;
        tx.commit()?;
        Ok(())
    }

    /// AddMember: a VM into a VM collection, or a collection into a collection of
    /// collections. Adding a member twice is an error (already exists).
    pub fn add_member(&self, collection: &str, member: &str) -> Result<Collection> {
        let mut conn = self.db();
        let cid = resolve(&conn, "collections", collection, "collection")?;
        let coll = load_collection(&conn, &cid)?;
        let mid = if coll.kind == COLLECTION_OF_VMS {
            resolve(&conn, "vms", member, "VM")?
        } else {
            let mid = resolve(&conn, "collections", member, "collection")?;
            if mid == cid {
                return Err(HostError::invalid("a collection cannot contain itself"));
            }
            mid
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx
            .query_row(
                "SELECT 1 FROM collection_members WHERE collection_id = ?1 AND member_id = ?2",
                [&cid, &mid],
                |_| Ok(()),
            )
            .optional()?
            .is_some()
        {
            return Err(HostError::AlreadyExists(format!(
                "{mid} is already a member of collection {cid}"
            )));
        }
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM collection_members",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO collection_members (collection_id, member_id, seq) VALUES (?1, ?2, ?3)",
            params![cid, mid, seq],
        )?;
        tx.commit()?;
        load_collection(&conn, &cid)
    }

    /// RemoveMember: removing something that is not a member is an error (not found).
    pub fn remove_member(&self, collection: &str, member: &str) -> Result<Collection> {
        let conn = self.db();
        let cid = resolve(&conn, "collections", collection, "collection")?;
        let mid = resolve(&conn, "vms", member, "VM")
            .or_else(|_| resolve(&conn, "collections", member, "member"))?;
        let n = conn.execute(
            "DELETE FROM collection_members WHERE collection_id = ?1 AND member_id = ?2",
            [&cid, &mid],
        )?;
        if n == 0 {
            return Err(HostError::not_found(format!(
                "{mid} is not a member of collection {cid}"
            )));
        }
        load_collection(&conn, &cid)
    }

    /// RemoveMemberById: succeeds when no collection with that id exists (documented
    /// idempotent cleanup); when the collection exists, the member must be in it.
    pub fn remove_member_by_id(&self, member: &str, collection_id: &str) -> Result<()> {
        let conn = self.db();
        let cid = norm_id(collection_id);
        if conn
            .query_row(
                "SELECT 1 FROM collections WHERE id = ?1",
                [&cid],
                |_| Ok(()),
            )
            .optional()?
            .is_none()
        {
            return Ok(());
        }
        drop(conn);
        self.remove_member(&cid, member).map(|_| ())
    }

    // ------------------------------------------------------------------ snapshots

    pub fn snapshot(&self, id: &str) -> Result<Snapshot> {
        let conn = self.db();
        load_snapshot(&conn, &norm_id(id))
    }

    /// Snapshot collections, oldest first; `collection` filters by VM collection.
    pub fn snapshots(&self, collection: Option<&str>) -> Result<Vec<Snapshot>> {
        let conn = self.db();
        let ids = match collection {
            Some(c) => {
                let cid = resolve(&conn, "collections", c, "collection")?;
                let mut stmt =
                    conn.prepare("SELECT id FROM snapshots WHERE collection_id = ?1 ORDER BY seq")?;
                stmt.query_map([&cid], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => ids(&conn, "SELECT id FROM snapshots ORDER BY seq")?,
        };
        ids.iter().map(|id| load_snapshot(&conn, id)).collect()
    }

    /// The snapshot whose VSSD has this InstanceID.
    pub fn snapshot_of_vssd(&self, vssd_id: &str) -> Result<Snapshot> {
        let conn = self.db();
        let sid: String = conn
            .query_row(
                "SELECT snapshot_id FROM snapshot_vms WHERE vssd_id = ?1 COLLATE NOCASE",
                [vssd_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                HostError::not_found(format!("no snapshot settings with InstanceID {vssd_id}"))
            })?;
        load_snapshot(&conn, &sid)
    }

    pub fn refpoint(&self, id: &str) -> Result<RefPoint> {
        let conn = self.db();
        load_refpoint(&conn, &norm_id(id))
    }

    pub fn refpoints(&self, collection: Option<&str>) -> Result<Vec<RefPoint>> {
        let conn = self.db();
        let ids = match collection {
            Some(c) => {
                let cid = resolve(&conn, "collections", c, "collection")?;
                let mut stmt =
                    conn.prepare("SELECT id FROM refpoints WHERE collection_id = ?1 ORDER BY seq")?;
                stmt.query_map([&cid], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => ids(&conn, "SELECT id FROM refpoints ORDER BY seq")?,
        };
        ids.iter().map(|id| load_refpoint(&conn, id)).collect()
    }

    /// Checks CreateSnapshot's arguments without changing anything.
    pub fn check_create_snapshot(
        &self,
        collection: &str,
        snapshot_type: u16,
    ) -> Result<Collection> {
        if snapshot_type != SNAPSHOT_STANDARD && snapshot_type != SNAPSHOT_RECOVERY {
            return Err(HostError::invalid(format!(
                "SnapshotType {snapshot_type} is not supported (1 Standard, 2 Recovery)"
            )));
        }
        let coll = self.collection(collection)?;
        if coll.kind != COLLECTION_OF_VMS {
            return Err(HostError::InvalidType(format!(
                "{} is a collection of collections; snapshots are taken of VM collections",
                coll.id
            )));
        }
        if coll.members.is_empty() {
            return Err(HostError::state(format!(
                "collection {} has no member VMs",
                coll.id
            )));
        }
        Ok(coll)
    }

    /// CreateSnapshot as a job (JobType 198). The job's created element is the new
    /// `Msvm_SnapshotCollection`.
    pub fn start_create_snapshot(&self, collection: &str, snapshot_type: u16) -> Result<String> {
        let coll = self.check_create_snapshot(collection, snapshot_type)?;
        let cid = coll.id.clone();
        self.start_job(
            job_type::SNAPSHOT_COLLECTION,
            "Snapshot collection",
            &format!("Creating a snapshot of collection {cid}"),
            true,
            move |ctx| {
                let sid = ctx
                    .host()
                    .create_snapshot_now(&cid, snapshot_type, Some(ctx))?;
                Ok(vec![("Msvm_SnapshotCollection".to_string(), sid)])
            },
        )
    }

    /// CreateSnapshot, synchronously (what the job runs). Returns the snapshot id.
    ///
    /// One point in time for the whole group: under the repository lock (no guest write or
    /// other change interleaves) every disk of every member VM gets a new differencing child
    /// of its active layer; then ONE transaction records the snapshot (frozen layer = the old
    /// active layer) and switches every active layer to its child. Cost is independent of
    /// disk size: a child is a header and an empty table.
    pub fn create_snapshot_now(
        &self,
        collection: &str,
        snapshot_type: u16,
        ctx: Option<&crate::JobCtx>,
    ) -> Result<String> {
        let _lock = self.lock()?;
        let coll = self.check_create_snapshot(collection, snapshot_type)?;
        let vms: Vec<Vm> = {
            let conn = self.db();
            coll.members
                .iter()
                .map(|m| load_vm(&conn, m))
                .collect::<Result<_>>()?
        };
        let running = self.running_members(&vms)?;
        let mut children: Vec<(String, u32, PathBuf, PathBuf, Format)> = Vec::new(); // vm, idx, parent, child, fmt
        for vm in &vms {
            let dir = repo::vm_disk_dir(&self.inner.data_dir, &vm.id);
            for d in &vm.disks {
                let (ext, fmt) = if running.contains_key(&vm.id) {
                    crate::live::overlay_format()
                } else {
                    child_ext(d.format)
                };
                let child = dir.join(format!("{}.{ext}", new_guid().to_ascii_lowercase()));
                children.push((vm.id.clone(), d.index, d.path.clone(), child, fmt));
            }
        }
        let members = crate::live::members(&vms, &running, &children);
        let plan = Plan::Create {
            created: children.iter().map(|c| c.3.clone()).collect(),
            live: crate::live::switches(&vms, &members),
        };
        let jid = {
            let conn = self.db();
            journal::insert(
                &conn,
                "create-snapshot",
                "pending",
                &plan,
                ctx.map(|c| c.job_id()),
            )?
        };
        crash_point("create.journaled");
        let rollback = |host: &Host| {
            for c in &children {
                let _ = journal::delete_file(&c.3);
            }
            let _ = journal::remove(&host.db(), jid);
        };
        let total = children.len().max(1);
        for (i, (vm_id, _, parent, child, _)) in children.iter().enumerate() {
            let step = (|| -> Result<()> {
                if let Some(ctx) = ctx {
                    ctx.check_cancel()?;
                }
                self.create_layer_dir(child)?;
                if running.contains_key(vm_id) {
                    cosnap_disk::create_qcow2_overlay_of(&self.disk_chain(parent)?, child)?;
                } else {
                    cosnap_disk::create_child_of(&self.disk_chain(parent)?, child)?;
                }
                crate::modes::make_private_file(child)?;
                if let Ok(f) = std::fs::File::open(child) {
                    f.sync_all()?;
                }
                Ok(())
            })();
            if let Err(e) = step {
                rollback(self);
                return Err(e);
            }
            crash_point("create.child");
            if let Some(ctx) = ctx {
                ctx.progress(((i + 1) * 90 / total) as u16);
            }
        }
        for vm in &vms {
            journal::sync_parent(&repo::vm_disk_dir(&self.inner.data_dir, &vm.id).join("x"));
        }
        if let Some(ctx) = ctx
            && let Err(e) = ctx.check_cancel()
        {
            rollback(self);
            return Err(e);
        }
        let sid = new_guid();
        let bitmap =
            (snapshot_type == SNAPSHOT_RECOVERY).then(|| crate::live::snapshot_bitmap(&sid));
        crash_point("create.before-freeze");
        let frozen = match self.freeze_running(&members, bitmap.as_deref()) {
            Ok(report) => report,
            Err((e, kept)) => {
                for c in children.iter().filter(|c| !kept.contains(&c.3)) {
                    let _ = journal::delete_file(&c.3);
                }
                let _ = journal::remove(&self.db(), jid);
                return Err(e);
            }
        };
        crash_point("create.frozen");
        let pause_window_us = frozen.as_ref().map(|r| r.pause_window_us as i64);
        let now = now_ms();
        let result = (|| -> Result<()> {
            let mut conn = self.db();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM snapshots", [], |r| {
                    r.get(0)
                })?;
            let name = format!("{} - ({})", coll.name, rfc3339(now));
            tx.execute(
                "INSERT INTO snapshots (id, collection_id, name, snapshot_type, created, seq, pause_window_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![sid, coll.id, name, snapshot_type, now, seq, pause_window_us],
            )?;
            for vm in &vms {
                let vssd = format!("Microsoft:{}", new_guid());
                let settings = serde_json::to_string(&vm.settings())
                    .map_err(|e| HostError::Failed(e.to_string()))?;
                tx.execute(
                    "INSERT INTO snapshot_vms (snapshot_id, vm_id, vssd_id, parent_vssd, settings, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![sid, vm.id, vssd, vm.parent_snapshot, settings, now],
                )?;
                tx.execute(
                    "UPDATE vms SET parent_vssd = ?2 WHERE id = ?1",
                    params![vm.id, vssd],
                )?;
                for d in &vm.disks {
                    tx.execute(
                        "INSERT INTO snapshot_disks (snapshot_id, vm_id, idx, layer) VALUES (?1, ?2, ?3, ?4)",
                        params![sid, vm.id, d.index, p2s(&d.path)],
                    )?;
                }
            }
            for (vm_id, idx, parent, child, fmt) in &children {
                tx.execute(
                    "INSERT INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    params![p2s(child), vm_id, idx, p2s(parent), fmt.name()],
                )?;
                tx.execute(
                    "UPDATE vm_disks SET active_layer = ?3 WHERE vm_id = ?1 AND idx = ?2",
                    params![vm_id, idx, p2s(child)],
                )?;
            }
            journal::remove(&tx, jid)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            if frozen.is_none() {
                rollback(self);
            } else {
                // The running members write to their overlays now: those stay, recorded.
                let kept = self.keep_switched_overlays(&members)?;
                for c in children.iter().filter(|c| !kept.contains(&c.3)) {
                    let _ = journal::delete_file(&c.3);
                }
                let _ = journal::remove(&self.db(), jid);
            }
            return Err(e);
        }
        crash_point("create.committed");
        Ok(sid)
    }

    /// Objects some live export is reading (in-use marks whose owner still runs).
    fn in_use_ids(conn: &Connection) -> Result<HashSet<String>> {
        let mut stmt = conn.prepare("SELECT object_id, owner_pid, owner_start FROM in_use")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|(_, p, s)| repo::owner_alive(*p, *s as u64))
            .map(|(o, _, _)| o)
            .collect())
    }

    fn check_not_in_use(conn: &Connection, id: &str, what: &str) -> Result<()> {
        if Self::in_use_ids(conn)?.contains(id) {
            return Err(HostError::InUse(format!(
                "{what} {id} is being exported; try again when the export job ends"
            )));
        }
        Ok(())
    }

    /// Every layer file the in-use objects' chains read (frozen layers and their ancestors).
    fn in_use_chain_files(conn: &Connection) -> Result<HashSet<String>> {
        let ids = Self::in_use_ids(conn)?;
        let mut files = HashSet::new();
        for id in ids {
            let mut stmt = conn.prepare(
                "SELECT layer FROM snapshot_disks WHERE snapshot_id = ?1 UNION SELECT layer FROM refpoint_disks WHERE refpoint_id = ?1",
            )?;
            let tops = stmt
                .query_map([&id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for top in tops {
                let mut cur = Some(top);
                while let Some(p) = cur {
                    if !files.insert(p.clone()) {
                        break;
                    }
                    cur = conn
                        .query_row("SELECT parent FROM layers WHERE path = ?1", [&p], |r| {
                            r.get(0)
                        })
                        .optional()?
                        .flatten();
                }
            }
        }
        Ok(files)
    }

    pub fn check_destroy_snapshot(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        Ok(snap)
    }

    /// DestroySnapshot as a job (JobType 72).
    pub fn start_destroy_snapshot(&self, id: &str) -> Result<String> {
        let snap = self.check_destroy_snapshot(id)?;
        let sid = snap.id.clone();
        self.start_job(
            job_type::DESTROY_SNAPSHOT,
            "Destroy snapshot collection",
            &format!("Destroying snapshot collection {sid}"),
            true,
            move |ctx| {
                ctx.host().destroy_snapshot_now(&sid, Some(ctx))?;
                Ok(vec![])
            },
        )
    }

    /// DestroySnapshot, synchronously. Dependants: child snapshots are re-parented to the
    /// destroyed snapshot's parent (Hyper-V's behaviour); nothing cascades. Each frozen layer
    /// is released per `release_layers`. Cancellable until the single commit point;
    /// after it the merge always runs to the end (a half-merged layer cannot be un-merged).
    pub fn destroy_snapshot_now(&self, id: &str, ctx: Option<&crate::JobCtx>) -> Result<()> {
        let _lock = self.lock()?;
        let members = self.snapshot_members(&self.snapshot(id)?)?;
        self.refuse_while_running(&members, "DestroySnapshot")?;
        let mut conn = self.db();
        let snap = load_snapshot(&conn, &norm_id(id))?;
        Self::check_not_in_use(&conn, &snap.id, "snapshot collection")?;
        if let Some(ctx) = ctx {
            ctx.check_cancel()?;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let layers: Vec<PathBuf> = snap
            .vms
            .iter()
            .flat_map(|v| v.disks.iter().map(|d| d.path.clone()))
            .collect();
        for v in &snap.vms {
            tx.execute(
                "UPDATE snapshot_vms SET parent_vssd = ?2 WHERE parent_vssd = ?1",
                params![v.vssd_id, v.parent_vssd],
            )?;
            tx.execute(
                "UPDATE vms SET parent_vssd = ?2 WHERE parent_vssd = ?1",
                params![v.vssd_id, v.parent_vssd],
            )?;
        }
        tx.execute(
            "DELETE FROM snapshot_disks WHERE snapshot_id = ?1",
            [&snap.id],
        )?;
        tx.execute(
            "DELETE FROM snapshot_vms WHERE snapshot_id = ?1",
            [&snap.id],
        )?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [&snap.id])?;
        tx.execute("DELETE FROM exports WHERE source_id = ?1", [&snap.id])?;
        let (jid, plan) = journal_release(&tx, &layers, "destroy-snapshot", ctx)?;
        tx.commit()?;
        drop(conn);
        self.run_release(jid, &plan, ctx, "destroy.committed")
    }

    /// After the commit of a destroy: no more cancelling (a half-merged layer cannot be
    /// un-merged), then the journaled release steps, then the journal entry goes.
    fn run_release(
        &self,
        jid: i64,
        plan: &Plan,
        ctx: Option<&crate::JobCtx>,
        crash_label: &str,
    ) -> Result<()> {
        if let Some(ctx) = ctx {
            ctx.set_cancellable(false);
            ctx.progress(10);
        }
        crash_point(crash_label);
        if let Plan::Release { steps } = plan {
            journal::run_steps(steps)?;
        }
        journal::remove(&self.db(), jid)?;
        Ok(())
    }

    pub fn check_apply_snapshot(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        self.refuse_while_running(&self.snapshot_members(&snap)?, "ApplySnapshot")?;
        Ok(snap)
    }

    /// ApplySnapshot as a job (JobType 71).
    pub fn start_apply_snapshot(&self, id: &str) -> Result<String> {
        let snap = self.check_apply_snapshot(id)?;
        let sid = snap.id.clone();
        self.start_job(
            job_type::APPLY_SNAPSHOT,
            "Apply snapshot collection",
            &format!("Applying snapshot collection {sid}"),
            true,
            move |ctx| {
                ctx.host().apply_snapshot_now(&sid, Some(ctx))?;
                Ok(vec![])
            },
        )
    }

    /// ApplySnapshot, synchronously: every member VM of the snapshot gets a fresh child of
    /// its frozen layer as active layer, its settings back to the snapshot's, and its old
    /// active layer deleted (a leaf nothing else references). One transaction; journal.
    pub fn apply_snapshot_now(&self, id: &str, ctx: Option<&crate::JobCtx>) -> Result<()> {
        let _lock = self.lock()?;
        let (snap, vms) = {
            let conn = self.db();
            let snap = load_snapshot(&conn, &norm_id(id))?;
            Self::check_not_in_use(&conn, &snap.id, "snapshot collection")?;
            let vms = snap
                .vms
                .iter()
                .map(|v| load_vm(&conn, &v.vm_id))
                .collect::<Result<Vec<_>>>()?;
            (snap, vms)
        };
        self.refuse_while_running(&vms, "ApplySnapshot")?;
        let mut created = Vec::new(); // (vm, idx, frozen, child, fmt)
        for sv in &snap.vms {
            let dir = repo::vm_disk_dir(&self.inner.data_dir, &sv.vm_id);
            for d in &sv.disks {
                let (ext, fmt) = child_ext(d.format);
                let child = dir.join(format!("{}.{ext}", new_guid().to_ascii_lowercase()));
                created.push((sv.vm_id.clone(), d.index, d.path.clone(), child, fmt));
            }
        }
        let mut plan = Plan::Apply {
            created: created.iter().map(|c| c.3.clone()).collect(),
            delete_after: vec![],
        };
        let jid = journal::insert(
            &self.db(),
            "apply-snapshot",
            "pending",
            &plan,
            ctx.map(|c| c.job_id()),
        )?;
        crash_point("apply.journaled");
        let rollback = |host: &Host| {
            for c in &created {
                let _ = journal::delete_file(&c.3);
            }
            let _ = journal::remove(&host.db(), jid);
        };
        let total = created.len().max(1);
        for (i, (_, _, frozen, child, _)) in created.iter().enumerate() {
            let step = (|| -> Result<()> {
                if let Some(ctx) = ctx {
                    ctx.check_cancel()?;
                }
                self.create_layer_dir(child)?;
                cosnap_disk::create_child_of(&self.disk_chain(frozen)?, child)?;
                crate::modes::make_private_file(child)?;
                std::fs::File::open(child)?.sync_all()?;
                Ok(())
            })();
            if let Err(e) = step {
                rollback(self);
                return Err(e);
            }
            crash_point("apply.child");
            if let Some(ctx) = ctx {
                ctx.progress(((i + 1) * 80 / total) as u16);
            }
        }
        if let Some(ctx) = ctx
            && let Err(e) = ctx.check_cancel()
        {
            rollback(self);
            return Err(e);
        }
        let result = (|| -> Result<Vec<PathBuf>> {
            let mut conn = self.db();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut delete_after = Vec::new();
            for vm in &vms {
                for d in &vm.disks {
                    let referenced: i64 = tx.query_row(
                        "SELECT (SELECT COUNT(*) FROM snapshot_disks WHERE layer = ?1) + (SELECT COUNT(*) FROM refpoint_disks WHERE layer = ?1)
                         + (SELECT COUNT(*) FROM layers WHERE parent = ?1) + (SELECT COUNT(*) FROM layers WHERE path = ?1 AND owned = 0)",
                        [p2s(&d.path)],
                        |r| r.get(0),
                    )?;
                    if referenced == 0 {
                        tx.execute("DELETE FROM layers WHERE path = ?1", [p2s(&d.path)])?;
                        delete_after.push(d.path.clone());
                    }
                }
            }
            for (vm_id, idx, frozen, child, fmt) in &created {
                tx.execute(
                    "INSERT INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    params![p2s(child), vm_id, idx, p2s(frozen), fmt.name()],
                )?;
                tx.execute(
                    "UPDATE vm_disks SET active_layer = ?3 WHERE vm_id = ?1 AND idx = ?2",
                    params![vm_id, idx, p2s(child)],
                )?;
            }
            for sv in &snap.vms {
                let s = &sv.settings;
                tx.execute(
                    "UPDATE vms SET name = ?2, cpus = ?3, memory_mb = ?4, parent_vssd = ?5 WHERE id = ?1",
                    params![sv.vm_id, s.name, s.cpus, s.memory_mb as i64, sv.vssd_id],
                )?;
                tx.execute("DELETE FROM vm_nics WHERE vm_id = ?1", [&sv.vm_id])?;
                for (i, nic) in s.nics.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO vm_nics (vm_id, idx, mac, switch_name) VALUES (?1, ?2, ?3, ?4)",
                        params![sv.vm_id, i as i64, nic.mac, nic.switch_name],
                    )?;
                }
            }
            if let Plan::Apply {
                delete_after: d, ..
            } = &mut plan
            {
                *d = delete_after.clone();
            }
            journal::set_phase(&tx, jid, "committed", &plan)?;
            tx.commit()?;
            Ok(delete_after)
        })();
        let delete_after = match result {
            Ok(d) => d,
            Err(e) => {
                rollback(self);
                return Err(e);
            }
        };
        if let Some(ctx) = ctx {
            ctx.set_cancellable(false);
        }
        crash_point("apply.committed");
        for f in &delete_after {
            journal::delete_file(f)?;
            crash_point("apply.deleted");
        }
        journal::remove(&self.db(), jid)?;
        Ok(())
    }

    pub fn check_convert(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        if snap.snapshot_type != SNAPSHOT_RECOVERY {
            return Err(HostError::state(format!(
                "snapshot collection {} is a standard snapshot; only recovery snapshots (type 2) convert to reference points",
                snap.id
            )));
        }
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        Ok(snap)
    }

    /// ConvertToReferencePoint as a job (JobType 200); created element: the new
    /// `Msvm_ReferencePointCollection`.
    pub fn start_convert_to_refpoint(&self, id: &str) -> Result<String> {
        let snap = self.check_convert(id)?;
        let sid = snap.id.clone();
        self.start_job(
            job_type::CONVERT_TO_RP,
            "Convert snapshot to reference point",
            &format!("Converting snapshot collection {sid}"),
            true,
            move |ctx| {
                let rp = ctx.host().convert_to_refpoint_now(&sid, Some(ctx))?;
                Ok(vec![("Msvm_ReferencePointCollection".to_string(), rp)])
            },
        )
    }

    /// ConvertToReferencePoint, synchronously: the snapshot collection and its VSSDs go
    /// away; a reference point collection (ReferencePointType 2 "RCT based": the kept frozen
    /// layers are our change tracking; ConsistencyLevel 1 Crash Consistent in that class's
    /// numbering) keeps each disk's frozen layer as its change boundary. No file changes:
    /// one transaction, no journal.
    pub fn convert_to_refpoint_now(&self, id: &str, ctx: Option<&crate::JobCtx>) -> Result<String> {
        let _lock = self.lock()?;
        let mut conn = self.db();
        let snap = load_snapshot(&conn, &norm_id(id))?;
        if snap.snapshot_type != SNAPSHOT_RECOVERY {
            return Err(HostError::state(format!(
                "snapshot collection {} is not a recovery snapshot",
                snap.id
            )));
        }
        Self::check_not_in_use(&conn, &snap.id, "snapshot collection")?;
        if let Some(ctx) = ctx {
            ctx.check_cancel()?;
        }
        let rp = new_guid();
        let now = now_ms();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM refpoints", [], |r| {
                r.get(0)
            })?;
        let coll_name: String = tx
            .query_row(
                "SELECT name FROM collections WHERE id = ?1",
                [&snap.collection_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        tx.execute(
            "INSERT INTO refpoints (id, collection_id, name, rp_type, consistency, created, from_snapshot, seq) VALUES (?1, ?2, ?3, 2, 1, ?4, ?5, ?6)",
            params![rp, snap.collection_id, format!("{coll_name} - reference point ({})", rfc3339(now)), now, snap.id, seq],
        )?;
        for v in &snap.vms {
            let settings =
                serde_json::to_string(&v.settings).map_err(|e| HostError::Failed(e.to_string()))?;
            tx.execute(
                "INSERT INTO refpoint_vms (refpoint_id, vm_id, instance_id, settings) VALUES (?1, ?2, ?3, ?4)",
                params![rp, v.vm_id, format!("Microsoft:{}", new_guid()), settings],
            )?;
            for d in &v.disks {
                let guid: String = tx
                    .query_row(
                        "SELECT disk_guid FROM vm_disks WHERE vm_id = ?1 AND idx = ?2",
                        params![v.vm_id, d.index],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or_else(new_guid);
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM refpoint_disks WHERE vm_id = ?1 AND idx = ?2",
                    params![v.vm_id, d.index],
                    |r| r.get(0),
                )?;
                let rct = format!(
                    "rctX:{}:{:08x}",
                    guid.to_ascii_lowercase().replace('-', ":"),
                    n + 1
                );
                tx.execute(
                    "INSERT INTO refpoint_disks (refpoint_id, vm_id, idx, layer, disk_identifier, rct_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![rp, v.vm_id, d.index, p2s(&d.path), d.disk_instance_id, rct],
                )?;
            }
            tx.execute(
                "UPDATE snapshot_vms SET parent_vssd = ?2 WHERE parent_vssd = ?1",
                params![v.vssd_id, v.parent_vssd],
            )?;
            tx.execute(
                "UPDATE vms SET parent_vssd = ?2 WHERE parent_vssd = ?1",
                params![v.vssd_id, v.parent_vssd],
            )?;
        }
        tx.execute(
            "DELETE FROM snapshot_disks WHERE snapshot_id = ?1",
            [&snap.id],
        )?;
        tx.execute(
            "DELETE FROM snapshot_vms WHERE snapshot_id = ?1",
            [&snap.id],
        )?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [&snap.id])?;
        tx.commit()?;
        crash_point("convert.committed");
        Ok(rp)
    }

    pub fn check_destroy_refpoint(&self, id: &str) -> Result<RefPoint> {
        let rp = self.refpoint(id)?;
        Self::check_not_in_use(&self.db(), &rp.id, "reference point collection")?;
        Ok(rp)
    }

    /// DestroyReferencePoint as a job (JobType 208).
    pub fn start_destroy_refpoint(&self, id: &str) -> Result<String> {
        let rp = self.check_destroy_refpoint(id)?;
        let rid = rp.id.clone();
        self.start_job(
            job_type::DESTROY_RP_ON_COLLECTION,
            "Destroy reference point collection",
            &format!("Destroying reference point collection {rid}"),
            true,
            move |ctx| {
                ctx.host().destroy_refpoint_now(&rid, Some(ctx))?;
                Ok(vec![])
            },
        )
    }

    /// DestroyReferencePoint: merges each boundary layer away exactly like a snapshot
    /// destroy. Nothing cascades (later reference points keep their own boundaries).
    pub fn destroy_refpoint_now(&self, id: &str, ctx: Option<&crate::JobCtx>) -> Result<()> {
        let _lock = self.lock()?;
        let mut conn = self.db();
        let rp = load_refpoint(&conn, &norm_id(id))?;
        Self::check_not_in_use(&conn, &rp.id, "reference point collection")?;
        if let Some(ctx) = ctx {
            ctx.check_cancel()?;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let layers: Vec<PathBuf> = rp
            .vms
            .iter()
            .flat_map(|v| v.disks.iter().map(|d| d.path.clone()))
            .collect();
        tx.execute(
            "DELETE FROM refpoint_disks WHERE refpoint_id = ?1",
            [&rp.id],
        )?;
        tx.execute("DELETE FROM refpoint_vms WHERE refpoint_id = ?1", [&rp.id])?;
        tx.execute("DELETE FROM refpoints WHERE id = ?1", [&rp.id])?;
        let (jid, plan) = journal_release(&tx, &layers, "destroy-refpoint", ctx)?;
        tx.commit()?;
        drop(conn);
        self.run_release(jid, &plan, ctx, "destroy-rp.committed")
    }

    // ------------------------------------------------------------------ for export / import

    /// The base layer a differential export diffs against: `base` if it is `top` itself or
    /// one of its ancestors in the repository's chains, else [`HostError::ChangeInfoGone`]
    /// (the blocks changed since `base` can no longer be told exactly, e.g. after applying
    /// an older snapshot the current branch does not descend from `base`).
    pub fn change_base(&self, top: &Path, base: &Path) -> Result<PathBuf> {
        let conn = self.db();
        let base_s = p2s(base);
        let mut cur = Some(p2s(top));
        let mut guard = 0;
        while let Some(p) = cur {
            if p == base_s {
                return Ok(PathBuf::from(p));
            }
            guard += 1;
            if guard > 100_000 {
                break;
            }
            cur = conn
                .query_row("SELECT parent FROM layers WHERE path = ?1", [&p], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
        }
        Err(HostError::ChangeInfoGone(format!(
            "layer {} is no longer an ancestor of {}: the change information for this base is gone",
            base.display(),
            top.display()
        )))
    }

    /// Marks a snapshot or reference point collection "in use by an export" for job
    /// `job_id`: DestroySnapshot/ApplySnapshot/Convert/DestroyReferencePoint on it (and any
    /// operation that would delete a layer its chain reads) fail with in-use meanwhile. The
    /// mark goes away when the guard drops, or at the next start-up if this process dies.
    pub fn mark_in_use(&self, object_id: &str, job_id: &str) -> Result<InUseGuard> {
        let _lock = self.lock()?;
        let (pid, start) = repo::own_identity();
        let id = norm_id(object_id);
        let conn = self.db();
        let exists: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM snapshots WHERE id = ?1) + (SELECT COUNT(*) FROM refpoints WHERE id = ?1)",
            [&id],
            |r| r.get(0),
        )?;
        if exists == 0 {
            return Err(HostError::not_found(format!(
                "no snapshot or reference point collection {id}"
            )));
        }
        conn.execute(
            "INSERT OR REPLACE INTO in_use (object_id, job_id, owner_pid, owner_start) VALUES (?1, ?2, ?3, ?4)",
            params![id, job_id, pid, start as i64],
        )?;
        Ok(InUseGuard {
            host: self.clone(),
            object_id: id,
            job_id: job_id.to_string(),
        })
    }

    /// Records a finished export so a later differential PreserveChain export can find the
    /// base export's disk files. Returns the record id.
    pub fn record_export(
        &self,
        source_id: &str,
        job_id: Option<&str>,
        package_dir: &Path,
        disks: &[ExportedDisk],
    ) -> Result<String> {
        let id = new_guid();
        let conn = self.db();
        let seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM exports", [], |r| {
                r.get(0)
            })?;
        let disks = serde_json::to_string(disks).map_err(|e| HostError::Failed(e.to_string()))?;
        conn.execute(
            "INSERT INTO exports (id, source_id, job_id, package_dir, created, disks, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, norm_id(source_id), job_id, p2s(package_dir), rfc3339(now_ms()), disks, seq],
        )?;
        Ok(id)
    }

    /// Exports recorded for a snapshot collection or reference point collection, newest
    /// first. For a reference point, exports of the snapshot it was converted from count.
    pub fn exports_of(&self, source_id: &str) -> Result<Vec<ExportRecord>> {
        let conn = self.db();
        let id = norm_id(source_id);
        let from: Option<String> = conn
            .query_row(
                "SELECT from_snapshot FROM refpoints WHERE id = ?1",
                [&id],
                |r| r.get(0),
            )
            .optional()?;
        let mut stmt = conn.prepare(
            "SELECT id, source_id, job_id, package_dir, created, disks FROM exports WHERE source_id = ?1 OR source_id = ?2 ORDER BY seq DESC",
        )?;
        let rows = stmt
            .query_map(params![id, from.unwrap_or_default()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, source_id, job_id, dir, created, disks)| {
                Ok(ExportRecord {
                    id,
                    source_id,
                    job_id,
                    package_dir: PathBuf::from(dir),
                    created,
                    disks: serde_json::from_str(&disks)
                        .map_err(|e| HostError::Failed(e.to_string()))?,
                })
            })
            .collect()
    }
}

/// Keeps an in-use mark alive; see [`Host::mark_in_use`].
pub struct InUseGuard {
    host: Host,
    object_id: String,
    job_id: String,
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let _ = self.host.db().execute(
            "DELETE FROM in_use WHERE object_id = ?1 AND job_id = ?2",
            params![self.object_id, self.job_id],
        );
    }
}

/// Inside a destroy's transaction: the release plan of `layers` ([`release_layers`]),
/// journaled as committed under `kind`. Returns the journal id and the plan to run once
/// the transaction commits ([`Host::run_release`]).
fn journal_release(
    tx: &Connection,
    layers: &[PathBuf],
    kind: &str,
    ctx: Option<&crate::JobCtx>,
) -> Result<(i64, Plan)> {
    let plan = Plan::Release {
        steps: release_layers(tx, layers)?,
    };
    let jid = journal::insert(tx, kind, "committed", &plan, ctx.map(|c| c.job_id()))?;
    Ok((jid, plan))
}

/// Releases frozen layers no longer referenced by the destroyed object, inside the
/// caller's transaction, and returns the file steps to run after commit.
///
/// For each layer F:
/// * still referenced (by a VM, a snapshot or a reference point) → nothing;
/// * exactly one child C → merge C into F (`commit`), repoint everything that named C (an
///   active layer, a snapshot's frozen layer, a reference point's boundary) to F, rebase
///   C's children onto F, delete C. The merge only goes *down into* F: boundaries below F
///   stay intact, and F now shows exactly what C showed, so every reference stays exact
///   (including a reference point whose boundary was C: the blocks above F are precisely
///   those written since it);
/// * several children → if cosnap owns F: `pull` F into each child and delete F; if F is
///   the user's base disk, it is kept (cosnap never deletes a file it did not create);
/// * no child → delete F if cosnap owns it.
///
/// Refused (in use) when a file to delete is read by a running export.
pub(crate) fn release_layers(tx: &Connection, layers: &[PathBuf]) -> Result<Vec<Step>> {
    let busy = Host::in_use_chain_files(tx)?;
    let mut steps = Vec::new();
    for f in layers {
        let fs = p2s(f);
        let refs: i64 = tx.query_row(
            "SELECT (SELECT COUNT(*) FROM snapshot_disks WHERE layer = ?1) + (SELECT COUNT(*) FROM refpoint_disks WHERE layer = ?1)
             + (SELECT COUNT(*) FROM vm_disks WHERE active_layer = ?1)",
            [&fs],
            |r| r.get(0),
        )?;
        if refs > 0 {
            continue;
        }
        let (parent, owned): (Option<String>, bool) = tx
            .query_row(
                "SELECT parent, owned FROM layers WHERE path = ?1",
                [&fs],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()?
            .unwrap_or((None, false));
        let children: Vec<String> = {
            let mut stmt = tx.prepare("SELECT path FROM layers WHERE parent = ?1 ORDER BY path")?;
            stmt.query_map([&fs], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        match children.as_slice() {
            [c] => {
                if busy.contains(c) {
                    return Err(HostError::InUse(format!(
                        "layer {c} is read by a running export"
                    )));
                }
                let grandchildren: Vec<String> = {
                    let mut stmt =
                        tx.prepare("SELECT path FROM layers WHERE parent = ?1 ORDER BY path")?;
                    stmt.query_map([c], |r| r.get(0))?
                        .collect::<Result<_, _>>()?
                };
                let (chain, rebase_formats) = recorded_for_merge(tx, c, &grandchildren)?;
                tx.execute(
                    "UPDATE vm_disks SET active_layer = ?2 WHERE active_layer = ?1",
                    [c, &fs],
                )?;
                tx.execute(
                    "UPDATE snapshot_disks SET layer = ?2 WHERE layer = ?1",
                    [c, &fs],
                )?;
                tx.execute(
                    "UPDATE refpoint_disks SET layer = ?2 WHERE layer = ?1",
                    [c, &fs],
                )?;
                tx.execute("UPDATE layers SET parent = ?2 WHERE parent = ?1", [c, &fs])?;
                // F takes C's format only in name: C's data now lives in F, F keeps its format.
                tx.execute("DELETE FROM layers WHERE path = ?1", [c])?;
                steps.push(Step::Merge {
                    child: PathBuf::from(c),
                    into: f.clone(),
                    rebase: grandchildren.into_iter().map(PathBuf::from).collect(),
                    chain,
                    rebase_formats,
                });
            }
            [] => {
                if owned {
                    if busy.contains(&fs) {
                        return Err(HostError::InUse(format!(
                            "layer {fs} is read by a running export"
                        )));
                    }
                    tx.execute("DELETE FROM layers WHERE path = ?1", [&fs])?;
                    steps.push(Step::Delete { path: f.clone() });
                }
            }
            many => {
                if owned {
                    if busy.contains(&fs) {
                        return Err(HostError::InUse(format!(
                            "layer {fs} is read by a running export"
                        )));
                    }
                    let chains = recorded_chains(tx, many)?;
                    tx.execute(
                        "UPDATE layers SET parent = ?2 WHERE parent = ?1",
                        params![fs, parent],
                    )?;
                    tx.execute("DELETE FROM layers WHERE path = ?1", [&fs])?;
                    steps.push(Step::Pull {
                        parent: f.clone(),
                        children: many.iter().map(PathBuf::from).collect(),
                        chains,
                    });
                }
            }
        }
    }
    Ok(steps)
}

/// The chain of `child` and the formats of `grandchildren` as recorded before a release
/// rewrites them: what its merge step needs after a crash (see [`journal::Step::Merge`]).
fn recorded_for_merge(
    tx: &Connection,
    child: &str,
    grandchildren: &[String],
) -> Result<(Vec<LayerSpec>, Vec<Format>)> {
    let chain = crate::chains::recorded_chain(tx, Path::new(child))?;
    let formats = recorded_chains(tx, grandchildren)?
        .into_iter()
        .map(|c| c[0].format)
        .collect();
    Ok((chain, formats))
}

/// The recorded chains of `layers`.
fn recorded_chains(tx: &Connection, layers: &[String]) -> Result<Vec<Vec<LayerSpec>>> {
    layers
        .iter()
        .map(|l| crate::chains::recorded_chain(tx, Path::new(l)))
        .collect()
}

fn valid_mac(mac: &str) -> bool {
    let hex: String = mac.chars().filter(|c| *c != ':' && *c != '-').collect();
    hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// MACs are stored as Hyper-V shows them: 12 upper-case hex digits, no separators.
fn normalize_mac(mac: &str) -> String {
    mac.chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect::<String>()
        .to_ascii_uppercase()
}

fn ids(conn: &Connection, sql: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    Ok(stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?)
}

/// Resolves an id (any case, braces optional) or a unique name in `table`.
pub(crate) fn resolve(
    conn: &Connection,
    table: &str,
    id_or_name: &str,
    what: &str,
) -> Result<String> {
    let id = norm_id(id_or_name);
    if conn
        .query_row(
            &format!("SELECT 1 FROM {table} WHERE id = ?1"),
            [&id],
            |_| Ok(()),
        )
        .optional()?
        .is_some()
    {
        return Ok(id);
    }
    let mut stmt = conn.prepare(&format!("SELECT id FROM {table} WHERE name = ?1"))?;
    let found: Vec<String> = stmt
        .query_map([id_or_name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => Err(HostError::not_found(format!(
            "no {what} with id or name '{id_or_name}'"
        ))),
        n => Err(HostError::invalid(format!(
            "{n} {what}s are named '{id_or_name}'; use the id"
        ))),
    }
}

pub(crate) fn load_vm(conn: &Connection, id: &str) -> Result<Vm> {
    let (name, cpus, memory_mb, created, parent): (String, u32, i64, String, Option<String>) = conn
        .query_row(
            "SELECT name, cpus, memory_mb, created, parent_vssd FROM vms WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no VM with id {id}")))?;
    let mut stmt = conn.prepare(
        "SELECT d.idx, d.active_layer, COALESCE(l.format, d.base_format), d.base_path, d.base_format, d.disk_guid
         FROM vm_disks d LEFT JOIN layers l ON l.path = d.active_layer WHERE d.vm_id = ?1 ORDER BY d.idx",
    )?;
    let disks = stmt
        .query_map([id], |r| {
            let idx: u32 = r.get(0)?;
            let guid: String = r.get(5)?;
            Ok(VmDisk {
                index: idx,
                path: PathBuf::from(r.get::<_, String>(1)?),
                format: fmt_of(&r.get::<_, String>(2)?),
                base_path: PathBuf::from(r.get::<_, String>(3)?),
                base_format: fmt_of(&r.get::<_, String>(4)?),
                instance_id: disk_instance_id(id, &guid, idx),
                tracking_guid: guid,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt =
        conn.prepare("SELECT mac, switch_name FROM vm_nics WHERE vm_id = ?1 ORDER BY idx")?;
    let nics = stmt
        .query_map([id], |r| {
            Ok(Nic {
                mac: r.get(0)?,
                switch_name: r.get(1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT m.collection_id FROM collection_members m JOIN collections c ON c.id = m.collection_id WHERE m.member_id = ?1 ORDER BY c.seq",
    )?;
    let collections = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Vm {
        id: id.to_string(),
        name,
        cpus,
        memory_mb: memory_mb as u64,
        created,
        disks,
        nics,
        parent_snapshot: parent,
        collections,
        run: crate::vm_boot::load_run_settings(conn, id)?,
        state: None,
    })
}

/// A disk's InstanceID, shaped like Hyper-V's resource InstanceIDs
/// (`Microsoft:<VM GUID>\<disk GUID>\0\<slot>\D`).
pub fn disk_instance_id(vm_id: &str, disk_guid: &str, idx: u32) -> String {
    format!("Microsoft:{vm_id}\\{disk_guid}\\0\\{idx}\\D")
}

pub(crate) fn load_collection(conn: &Connection, id: &str) -> Result<Collection> {
    let (name, kind, created): (String, u16, String) = conn
        .query_row(
            "SELECT name, kind, created FROM collections WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no collection with id {id}")))?;
    let mut stmt = conn.prepare(
        "SELECT member_id FROM collection_members WHERE collection_id = ?1 ORDER BY seq",
    )?;
    let members = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Collection {
        id: id.to_string(),
        name,
        kind,
        created,
        members,
    })
}

fn layer_format(conn: &Connection, path: &str) -> Result<Format> {
    Ok(conn
        .query_row("SELECT format FROM layers WHERE path = ?1", [path], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .map(|f| fmt_of(&f))
        .unwrap_or(Format::Raw))
}

fn settings_of(text: &str) -> Result<VmSettings> {
    serde_json::from_str(text)
        .map_err(|e| HostError::Failed(format!("stored settings unreadable: {e}")))
}

pub(crate) fn load_snapshot(conn: &Connection, id: &str) -> Result<Snapshot> {
    let (collection_id, name, snapshot_type, created_ms, pause_window_us): (
        String,
        String,
        u16,
        i64,
        Option<i64>,
    ) = conn
        .query_row(
            "SELECT collection_id, name, snapshot_type, created, pause_window_us FROM snapshots WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no snapshot collection with id {id}")))?;
    let mut stmt = conn.prepare(
        "SELECT s.vm_id, s.vssd_id, s.parent_vssd, s.settings, s.created FROM snapshot_vms s
         LEFT JOIN vms v ON v.id = s.vm_id WHERE s.snapshot_id = ?1 ORDER BY v.seq",
    )?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut vms = Vec::new();
    for (vm_id, vssd_id, parent_vssd, settings, created) in rows {
        let mut stmt = conn.prepare(
            "SELECT s.idx, s.layer, COALESCE(d.disk_guid, '') FROM snapshot_disks s LEFT JOIN vm_disks d ON d.vm_id = s.vm_id AND d.idx = s.idx
             WHERE s.snapshot_id = ?1 AND s.vm_id = ?2 ORDER BY s.idx",
        )?;
        let raw = stmt
            .query_map([id, &vm_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut disks = Vec::new();
        for (idx, layer, guid) in raw {
            disks.push(LayerRef {
                index: idx,
                format: layer_format(conn, &layer)?,
                path: PathBuf::from(layer),
                disk_instance_id: disk_instance_id(&vm_id, &guid, idx),
            });
        }
        vms.push(SnapshotVm {
            settings: settings_of(&settings)?,
            vm_id,
            vssd_id,
            parent_vssd,
            created: rfc3339(created),
            disks,
        });
    }
    Ok(Snapshot {
        id: id.to_string(),
        collection_id,
        name,
        snapshot_type,
        created: rfc3339(created_ms),
        created_ms,
        vms,
        pause_window_us: pause_window_us.map(|us| us as u64),
    })
}

pub(crate) fn load_refpoint(conn: &Connection, id: &str) -> Result<RefPoint> {
    let (collection_id, name, rp_type, consistency, created_ms, from_snapshot): (String, String, u16, u16, i64, String) = conn
        .query_row(
            "SELECT collection_id, name, rp_type, consistency, created, from_snapshot FROM refpoints WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no reference point collection with id {id}")))?;
    let mut stmt = conn.prepare(
        "SELECT r.vm_id, r.instance_id, r.settings FROM refpoint_vms r LEFT JOIN vms v ON v.id = r.vm_id WHERE r.refpoint_id = ?1 ORDER BY v.seq",
    )?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut vms = Vec::new();
    for (vm_id, instance_id, settings) in rows {
        let mut stmt = conn.prepare(
            "SELECT idx, layer, disk_identifier, rct_id FROM refpoint_disks WHERE refpoint_id = ?1 AND vm_id = ?2 ORDER BY idx",
        )?;
        let raw = stmt
            .query_map([id, &vm_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut disks = Vec::new();
        for (idx, layer, disk_id, rct) in raw {
            disks.push(RefPointDisk {
                index: idx,
                format: layer_format(conn, &layer)?,
                path: PathBuf::from(layer),
                disk_instance_id: disk_id,
                rct_id: rct,
            });
        }
        vms.push(RefPointVm {
            vm_id,
            instance_id,
            settings: settings_of(&settings)?,
            disks,
        });
    }
    Ok(RefPoint {
        id: id.to_string(),
        collection_id,
        name,
        rp_type,
        consistency,
        created: rfc3339(created_ms),
        created_ms,
        from_snapshot,
        vms,
    })
}

/// How long [`Host::wait_job`] sleeps between polls.
pub(crate) const POLL: Duration = Duration::from_millis(15);

impl Host {
    /// Checks that the repository agrees with the files on disk and returns every
    /// disagreement found (empty = consistent): each known layer file exists; each file
    /// under `<data-dir>/disks/` is a known layer (no orphans); each layer's recorded parent
    /// is the parent its file names; no journal row is left over.
    pub fn verify(&self) -> Result<Vec<String>> {
        let conn = self.db();
        let mut problems = Vec::new();
        let layers: Vec<(String, Option<String>, bool)> = {
            let mut stmt = conn.prepare("SELECT path, parent, owned FROM layers")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?
                .collect::<Result<_, _>>()?
        };
        let known: HashSet<String> = layers.iter().map(|l| l.0.clone()).collect();
        for (path, parent, _) in &layers {
            let p = Path::new(path);
            if !p.exists() {
                problems.push(format!("layer {path} is recorded but missing"));
                continue;
            }
            if parent.is_some() {
                // Opening the recorded chain checks that each file names its recorded parent.
                let opened = crate::chains::recorded_chain(&conn, p)
                    .and_then(|chain| Ok(cosnap_disk::open_chain(&chain, false)?));
                if let Err(e) = opened {
                    problems.push(format!(
                        "layer {path}: chain does not match the record: {e}"
                    ));
                }
            }
        }
        let disks = self.inner.data_dir.join("disks");
        if let Ok(vm_dirs) = std::fs::read_dir(&disks) {
            for d in vm_dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        let p = p2s(&f.path());
                        if !known.contains(&p) {
                            problems.push(format!("orphan layer file {p}"));
                        }
                    }
                }
            }
        }
        for (what, sql) in [
            ("active layer", "SELECT active_layer FROM vm_disks"),
            ("snapshot layer", "SELECT layer FROM snapshot_disks"),
            ("reference point layer", "SELECT layer FROM refpoint_disks"),
        ] {
            for p in ids(&conn, sql)? {
                if !known.contains(&p) {
                    problems.push(format!("{what} {p} is not a known layer"));
                }
            }
        }
        let pending: i64 = conn.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))?;
        if pending > 0 {
            problems.push(format!("{pending} journal row(s) left"));
        }
        Ok(problems)
    }
}
