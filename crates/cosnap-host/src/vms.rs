//! Virtual machines: define (with the disk and MAC checks), look up, destroy, and the guest
//! write used by tests and the demo.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::journal::{self, Plan, Step};
use crate::model::*;
use crate::repo;
use crate::rows::{ids, load_vm, p2s, resolve};
use crate::util::{new_guid, norm_id, now_ms, rfc3339};

impl Host {
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
        if self.running_vm(&vm.id).is_some() {
            // QEMU owns the active layer while the VM runs: the guest writes it itself.
            return Err(HostError::InvalidState(format!(
                "VM {} is running; its guest writes its disks",
                vm.name
            )));
        }
        let disk = vm.disks.get(index as usize).ok_or_else(|| {
            HostError::invalid(format!(
                "VM {} has {} disk(s); no disk {index}",
                vm.id,
                vm.disks.len()
            ))
        })?;
        let chain = self.disk_chain(&disk.path)?;
        if let Some(active) = chain.first() {
            journal::forget_change_tracking(active)?;
        }
        cosnap_disk::write_pattern_to(&chain, offset, len, pattern)?;
        Ok(())
    }
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
