//! `vm define`'s run options (boot, COM2) and `vm console`: what the CLI adds for running VMs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::Args;
use cosnap_host::{Host, Vm, VmBoot, VmRunSettings};

use crate::exit::fail;
use crate::exit::{FAILED, Failure, USAGE};

/// How a defined VM boots and its second serial port.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Boot this kernel directly (else the firmware boots disk 0).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Serve the VM's second serial port (the guest's ttyS1) as a Unix socket server here.
    #[arg(long)]
    com2: Option<PathBuf>,
}

/// Records the run options of a VM just defined; if they are refused, the definition is
/// undone so that a failed `vm define` leaves nothing behind.
pub fn apply_run_args(host: &Host, vm: Vm, run: RunArgs) -> Result<Vm, Failure> {
    if run.kernel.is_none() && run.com2.is_none() {
        return Ok(vm);
    }
    let boot = match run.kernel {
        Some(kernel) => VmBoot::Kernel {
            kernel,
            initrd: run.initrd,
            cmdline: run.cmdline.unwrap_or_default(),
        },
        None => VmBoot::Firmware,
    };
    let settings = VmRunSettings {
        boot,
        com2: run.com2,
    };
    if let Err(error) = host.set_run_settings(&vm.id, &settings) {
        let _ = host.destroy_vm(&vm.id);
        return Err(fail(error));
    }
    host.vm(&vm.id).map_err(fail)
}

/// Bridges the terminal and the VM's console socket until either side closes.
pub fn console(socket: &Path) -> Result<(), Failure> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| Failure::new(FAILED, anyhow::anyhow!("console {}: {e}", socket.display())))?;
    let mut from_vm = stream
        .try_clone()
        .map_err(|e| Failure::new(FAILED, anyhow::anyhow!("console: {e}")))?;
    let output = std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = from_vm.read(&mut buffer) {
            if read == 0
                || stdout
                    .write_all(&buffer[..read])
                    .and_then(|()| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });

    let mut to_vm = stream;
    let copied = std::io::copy(&mut std::io::stdin().lock(), &mut to_vm);
    let _ = to_vm.shutdown(std::net::Shutdown::Both);
    let _ = output.join();
    copied
        .map(drop)
        .map_err(|e| Failure::new(USAGE, anyhow::anyhow!("console: {e}")))
}
