//! Starting the record-writing test guest on a host's VM, as the host's VM room would: named
//! and placed so the host finds it running, on the VM's recorded chains (each layer in the
//! format the repository records), under TCG.

use cosnap_disk::Format;
use cosnap_host::{Host, Vm};
use cosnap_test_support::{PidGuard, guest};
use cosnap_vmm::{
    Accelerator, Boot, DiskChain, DiskLayer, Hypervisor, LayerFormat, QemuHypervisor, SerialSocket,
    VmHandle, VmLaunch,
};

/// The host's view of a VM's disks as the chains QEMU runs (base first).
fn chains_of(host: &Host, vm: &Vm) -> Vec<DiskChain> {
    vm.disks
        .iter()
        .map(|d| {
            let mut layers: Vec<DiskLayer> = host
                .disk_chain(&d.path)
                .unwrap()
                .into_iter()
                .map(|l| DiskLayer {
                    path: l.path,
                    format: match l.format {
                        Format::Qcow2 => LayerFormat::Qcow2,
                        Format::Vhdx => LayerFormat::Vhdx,
                        Format::Raw => LayerFormat::Raw,
                    },
                })
                .collect();
            layers.reverse();
            DiskChain { layers }
        })
        .collect()
}

/// Starts the guest for `vm` (two disks, vda and vdb) in the host's run directory; `knobs`
/// adds `cosnap.*` options to its command line. Does not wait for it to be ready.
pub fn start_guest(
    hv: &QemuHypervisor,
    host: &Host,
    vm: &Vm,
    knobs: &str,
    com2: SerialSocket,
) -> (PidGuard, VmHandle) {
    let (kernel, initrd) = guest().expect("checked by the caller");
    let launch = VmLaunch {
        name: vm.id.clone(),
        run_dir: host.data_dir().join("run").join(&vm.id),
        cpus: 1,
        memory_mb: 256,
        disks: chains_of(host, vm),
        boot: Boot::Kernel {
            kernel,
            initrd: Some(initrd),
            cmdline: format!(
                "console=ttyS0 quiet panic=-1 cosnap.vm={} cosnap.disks=vda,vdb {knobs}",
                vm.name
            ),
        },
        com2: Some(com2),
        user_nic: false,
        accelerator: Some(Accelerator::Tcg),
    };
    let handle = hv.start(&launch).expect("start VM");
    (PidGuard(handle.pid), handle)
}
