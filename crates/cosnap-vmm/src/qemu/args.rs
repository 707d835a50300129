//! The `qemu-system-x86_64` command line for a [`VmLaunch`]: named `-blockdev` nodes per disk
//! layer, boot, serial ports on Unix sockets, QMP, pid file and logs in the run directory.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Result, VmmError};
use crate::model::{Accelerator, Boot, DiskChain, LayerFormat, SerialSocket, VmLaunch};

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The files of one VM's run directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        RunPaths {
            dir: dir.to_path_buf(),
        }
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Everything the guest wrote on COM1.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// QEMU's `-D` log.
    pub fn debug_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// QEMU's standard output and error.
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("qemu.err")
    }
}

/// The format node QEMU knows layer `layer` of disk `disk` by; its file node adds `f`.
pub fn layer_node(disk: usize, layer: usize) -> String {
    format!("d{disk}l{layer}")
}

/// The guest device id of disk `disk`.
pub fn device_id(disk: usize) -> String {
    format!("disk{disk}")
}

/// Builds the argument list (without the program name).
pub fn qemu_args(launch: &VmLaunch, accel: Accelerator, run: &RunPaths) -> Result<Vec<String>> {
    check_launch(launch, run)?;
    let mut args = machine_args(launch, accel);
    args.extend(boot_args(&launch.boot));
    args.extend(serial_args(launch, run));
    for (index, chain) in launch.disks.iter().enumerate() {
        args.extend(disk_args(index, chain, launch.boot == Boot::Firmware));
    }
    if launch.user_nic {
        args.extend(strings(&["-nic", "user,model=virtio-net-pci"]));
    }
    args.extend(control_args(run));
    Ok(args)
}

fn check_launch(launch: &VmLaunch, run: &RunPaths) -> Result<()> {
    if launch.disks.is_empty() && launch.boot == Boot::Firmware {
        return Err(VmmError::InvalidLaunch(format!(
            "VM {} boots from firmware but has no disk",
            launch.name
        )));
    }

    for chain in &launch.disks {
        check_chain(chain)?;
    }

    let mut sockets = vec![run.qmp_socket(), run.console_socket()];
    if let Some(SerialSocket::Server(path) | SerialSocket::Client(path)) = &launch.com2 {
        sockets.push(path.clone());
    }
    for socket in sockets {
        if !socket.is_absolute() || socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmmError::InvalidLaunch(format!(
                "socket path {} must be absolute and at most {MAX_SOCKET_PATH} bytes",
                socket.display()
            )));
        }
    }
    Ok(())
}

fn check_chain(chain: &DiskChain) -> Result<()> {
    if chain.layers.is_empty() {
        return Err(VmmError::InvalidLaunch("a disk has no layer".into()));
    }

    for (index, layer) in chain.layers.iter().enumerate() {
        if !layer.path.is_absolute() {
            // QEMU records a backing path exactly as given: a relative one breaks the chain.
            return Err(VmmError::InvalidLaunch(format!(
                "disk layer {} is not an absolute path",
                layer.path.display()
            )));
        }
        if index > 0 && layer.format != LayerFormat::Qcow2 {
            return Err(VmmError::InvalidLaunch(format!(
                "disk layer {} is a {} child: QEMU runs qcow2 layers above the base only",
                layer.path.display(),
                layer.format.driver()
            )));
        }
    }
    Ok(())
}

fn machine_args(launch: &VmLaunch, accel: Accelerator) -> Vec<String> {
    let cpu = match accel {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    let mut args = strings(&["-name"]);
    args.push(escape_opt(&launch.name));
    args.extend(strings(&["-machine"]));
    args.push(format!("q35,accel={}", accel.name()));
    args.extend(strings(&["-cpu", cpu, "-m"]));
    args.push(launch.memory_mb.to_string());
    args.push("-smp".into());
    args.push(launch.cpus.max(1).to_string());
    // No -no-reboot: with it QEMU turns every reset (QMP system_reset included) into an exit,
    // and a VM's reboot keeps it running, as on Hyper-V.
    args.extend(strings(&[
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
    ]));
    args
}

fn boot_args(boot: &Boot) -> Vec<String> {
    match boot {
        Boot::Firmware => Vec::new(),
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            let mut args = vec!["-kernel".to_string(), path_text(kernel)];
            if let Some(initrd) = initrd {
                args.push("-initrd".into());
                args.push(path_text(initrd));
            }
            args.push("-append".into());
            args.push(cmdline.clone());
            args
        }
    }
}

fn serial_args(launch: &VmLaunch, run: &RunPaths) -> Vec<String> {
    let mut args = vec![
        "-chardev".to_string(),
        format!(
            "socket,id=com1,path={},server=on,wait=off,logfile={},logappend=on",
            escape_opt(&path_text(&run.console_socket())),
            escape_opt(&path_text(&run.serial_log()))
        ),
        "-serial".into(),
        "chardev:com1".into(),
    ];

    if let Some(com2) = &launch.com2 {
        let chardev = match com2 {
            SerialSocket::Server(path) => format!(
                "socket,id=com2,path={},server=on,wait=off",
                escape_opt(&path_text(path))
            ),
            SerialSocket::Client(path) => format!(
                "socket,id=com2,path={},reconnect-ms=100",
                escape_opt(&path_text(path))
            ),
        };
        args.extend([
            "-chardev".into(),
            chardev,
            "-serial".into(),
            "chardev:com2".into(),
        ]);
    }
    args
}

/// One file node and one format node per layer, each format node naming its backing node (the
/// base names none), so QEMU never follows a backing reference from an image header.
fn disk_args(disk: usize, chain: &DiskChain, boot_from_it: bool) -> Vec<String> {
    let mut args = Vec::new();
    for (index, layer) in chain.layers.iter().enumerate() {
        let node = layer_node(disk, index);
        let file = json!({"driver": "file", "filename": path_text(&layer.path), "node-name": format!("{node}f")});
        let mut format =
            json!({"driver": layer.format.driver(), "file": format!("{node}f"), "node-name": node});
        if layer.format == LayerFormat::Qcow2 {
            format["backing"] = match index {
                0 => serde_json::Value::Null,
                _ => json!(layer_node(disk, index - 1)),
            };
        }
        args.extend(["-blockdev".into(), file.to_string()]);
        args.extend(["-blockdev".into(), format.to_string()]);
    }

    let top = layer_node(disk, chain.layers.len() - 1);
    let mut device = format!("virtio-blk-pci,drive={top},id={}", device_id(disk));
    if boot_from_it && disk == 0 {
        device.push_str(",bootindex=0");
    }
    args.extend(["-device".into(), device]);
    args
}

fn control_args(run: &RunPaths) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            escape_opt(&path_text(&run.qmp_socket()))
        ),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-pidfile".into(),
        path_text(&run.pidfile()),
        "-D".into(),
        path_text(&run.debug_log()),
    ]
}

/// QEMU option values end at a comma; a literal comma is written twice.
fn escape_opt(text: &str) -> String {
    text.replace(',', ",,")
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiskLayer;

    fn launch(disks: Vec<DiskChain>) -> VmLaunch {
        VmLaunch {
            name: "vm,1".into(),
            run_dir: "/run/x".into(),
            cpus: 1,
            memory_mb: 256,
            disks,
            boot: Boot::Kernel {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0".into(),
            },
            com2: Some(SerialSocket::Server("/run/x/com2,s".into())),
            user_nic: false,
            accelerator: None,
        }
    }

    fn layer(path: &str, format: LayerFormat) -> DiskLayer {
        DiskLayer {
            path: path.into(),
            format,
        }
    }

    #[test]
    fn chain_layers_become_named_nodes_with_explicit_backing() {
        let chain = DiskChain {
            layers: vec![
                layer("/d/base.vhdx", LayerFormat::Vhdx),
                layer("/d/top.qcow2", LayerFormat::Qcow2),
            ],
        };
        let args = qemu_args(
            &launch(vec![chain]),
            Accelerator::Tcg,
            &RunPaths::new(Path::new("/run/x")),
        )
        .unwrap();
        let text = args.join(" ");

        assert!(
            text.contains(r#"{"driver":"vhdx","file":"d0l0f","node-name":"d0l0"}"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"{"backing":"d0l0","driver":"qcow2","file":"d0l1f","node-name":"d0l1"}"#
            ),
            "{text}"
        );
        assert!(text.contains("virtio-blk-pci,drive=d0l1,id=disk0"));
        assert!(text.contains("accel=tcg"));
        assert!(text.contains("path=/run/x/com2,,s,server=on"));
        assert!(args.contains(&"vm,,1".to_string()));
    }

    #[test]
    fn relative_and_vhdx_child_layers_are_refused() {
        let relative = DiskChain {
            layers: vec![layer("base.qcow2", LayerFormat::Qcow2)],
        };
        let vhdx_child = DiskChain {
            layers: vec![
                layer("/b.vhdx", LayerFormat::Vhdx),
                layer("/c.avhdx", LayerFormat::Vhdx),
            ],
        };
        let run = RunPaths::new(Path::new("/run/x"));

        assert!(qemu_args(&launch(vec![relative]), Accelerator::Tcg, &run).is_err());
        assert!(qemu_args(&launch(vec![vhdx_child]), Accelerator::Tcg, &run).is_err());
    }

    #[test]
    fn a_qcow2_base_opens_no_backing_from_its_header() {
        let chain = DiskChain {
            layers: vec![layer("/d/a.qcow2", LayerFormat::Qcow2)],
        };
        let args = qemu_args(
            &launch(vec![chain]),
            Accelerator::Kvm,
            &RunPaths::new(Path::new("/run/x")),
        )
        .unwrap();

        assert!(args.iter().any(|a| a.contains(r#""backing":null"#)));
        assert!(args.join(" ").contains("-cpu host"));
    }
}
