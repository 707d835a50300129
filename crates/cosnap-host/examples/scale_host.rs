//! Builds a big host for the scale harness (`benches/scale/`): N VMs with one small raw
//! disk each, one collection per ten VMs, and one recovery snapshot of each collection,
//! through the library (the CLI would start a process per object: minutes at 2,000 VMs).
//!
//! Usage: `scale_host DATA_DIR DISK_DIR VMS`

use std::path::PathBuf;
use std::time::Instant;

use cosnap_host::{COLLECTION_OF_VMS, DiskSpec, Host, VmSpec};

/// VMs per collection (2,000 VMs → 200 collections and 200 snapshots).
const VMS_PER_COLLECTION: usize = 10;
/// CreateSnapshot's SnapshotType for a recovery snapshot.
const RECOVERY: u16 = 2;
/// Size of each raw disk (sparse).
const DISK_BYTES: u64 = 1024 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, disks, count] = args.as_slice() else {
        return Err("usage: scale_host DATA_DIR DISK_DIR VMS".into());
    };
    let count: usize = count.parse()?;
    let disks = PathBuf::from(disks);
    std::fs::create_dir_all(&disks)?;
    let host = Host::open(data)?;
    let started = Instant::now();

    let mut vm_ids = Vec::with_capacity(count);
    for i in 0..count {
        let disk = disks.join(format!("vm{i}.raw"));
        std::fs::File::create(&disk)?.set_len(DISK_BYTES)?;
        let spec = VmSpec {
            memory_mb: 512,
            ..VmSpec::new(format!("scale-vm-{i}"), vec![DiskSpec::raw(disk)])
        };
        vm_ids.push(host.define_vm(&spec)?.id);
    }

    for (n, members) in vm_ids.chunks(VMS_PER_COLLECTION).enumerate() {
        let collection =
            host.define_collection(&format!("scale-group-{n}"), None, COLLECTION_OF_VMS)?;
        for vm in members {
            host.add_member(&collection.id, vm)?;
        }
        let job = host.start_create_snapshot(&collection.id, RECOVERY)?;
        if !host.wait_job(&job)?.succeeded() {
            return Err(format!("the snapshot of {} failed", collection.name).into());
        }
    }
    eprintln!(
        "built {count} VMs, {} collections and snapshots in {:.1} s",
        count.div_ceil(VMS_PER_COLLECTION),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
