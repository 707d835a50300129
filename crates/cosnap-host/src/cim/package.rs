//! The instances an export package stores to describe the exported objects: the CIM
//! face's side of [`PackageInstances`].

use cosnap_cim::{CimType, Instance, Value};

use crate::export::PackageInstances;
use crate::host::Host;
use crate::model::{Collection, Snapshot, SnapshotVm};

impl PackageInstances for Host {
    fn package_system(&self, vm_id: &str, fallback_name: &str) -> Instance {
        match self.vm(vm_id) {
            Ok(vm) => self.vm_instance(&vm),
            // The VM was destroyed since the snapshot: its identity is all that is left.
            Err(_) => Instance::new("Msvm_ComputerSystem")
                .with(
                    "Name",
                    CimType::String,
                    Some(Value::String(vm_id.to_string())),
                )
                .with(
                    "ElementName",
                    CimType::String,
                    Some(Value::String(fallback_name.to_string())),
                ),
        }
    }

    fn package_vm_settings(&self, snap: &Snapshot, vm: &SnapshotVm) -> (Instance, Vec<Instance>) {
        self.snapshot_vm_instances(snap, vm)
    }

    fn package_collection(&self, collection: &Collection) -> Instance {
        self.collection_instance(collection)
    }

    fn package_snapshot(&self, snap: &Snapshot) -> Instance {
        self.snapshot_collection_instance(snap)
    }
}
