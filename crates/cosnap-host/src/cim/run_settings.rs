//! A VM's run settings on the CIM face: its COM ports as Hyper-V shows them
//! (Msvm_SerialPortSettingData, ResourceType 21, `Connection[0]` = the socket path), its boot
//! as cosnap's own properties of Msvm_VirtualSystemSettingData, and both read back from what
//! a client sends (docs/decisions.md, "Run settings over CIM").

use std::path::{Path, PathBuf};

use cosnap_cim::{CimType, Instance, Value};

use super::paths::key;
use crate::error::HostError;
use crate::vm_boot::VmBoot;

pub const SERIAL_PORT_CLASS: &str = "Msvm_SerialPortSettingData";

/// Serial ports of a VM: COM 1 (cosnap's console) and COM 2 (the settable socket).
pub const SERIAL_PORTS: [u8; 2] = [1, 2];

/// The port a client may point somewhere; COM 1 is cosnap's console.
pub const SETTABLE_PORT: u8 = 2;

/// The VSSD properties carrying how the VM boots (no Hyper-V class has a kernel path).
pub const KERNEL_PROPERTY: &str = "CosnapKernel";
pub const INITRD_PROPERTY: &str = "CosnapInitrd";
pub const CMDLINE_PROPERTY: &str = "CosnapKernelCommandLine";

/// COM `port` of the settings `vssd_instance_id`, connected to `socket` when there is one.
pub fn serial_port_instance(vssd_instance_id: &str, port: u8, socket: Option<&Path>) -> Instance {
    let id = format!("{vssd_instance_id}\\Com\\{port}");
    let connection: Vec<Value> = socket
        .map(|p| Value::String(p.to_string_lossy().into_owned()))
        .into_iter()
        .collect();
    Instance::new(SERIAL_PORT_CLASS)
        .with(
            "InstanceID",
            CimType::String,
            Some(Value::String(id.clone())),
        )
        .with(
            "ElementName",
            CimType::String,
            Some(Value::String(format!("COM {port}"))),
        )
        .with("ResourceType", CimType::Uint16, Some(Value::Uint16(21)))
        .with(
            "ResourceSubType",
            CimType::String,
            Some(Value::String("Microsoft:Hyper-V:Serial Port".into())),
        )
        .with(
            "Address",
            CimType::String,
            Some(Value::String(port.to_string())),
        )
        .with(
            "Connection",
            CimType::String,
            Some(Value::Array(connection)),
        )
        .with_path(key(SERIAL_PORT_CLASS, "InstanceID", &id))
}

/// A VSSD with its boot properties set (all null for a firmware boot).
pub fn with_boot_properties(vssd: Instance, boot: &VmBoot) -> Instance {
    let text = |v: Option<String>| v.map(Value::String);
    let (kernel, initrd, cmdline) = boot.text_parts();
    vssd.with(KERNEL_PROPERTY, CimType::String, text(kernel))
        .with(INITRD_PROPERTY, CimType::String, text(initrd))
        .with(CMDLINE_PROPERTY, CimType::String, text(cmdline))
}

/// The boot a client's VSSD asks for: `None` when it carries no CosnapKernel property (boot
/// left as it is); a null or empty kernel is a firmware boot.
pub fn requested_boot(vssd: &Instance) -> Result<Option<VmBoot>, HostError> {
    if vssd.property(KERNEL_PROPERTY).is_none() {
        return Ok(None);
    }

    let kernel = string_property(vssd, KERNEL_PROPERTY)?.filter(|k| !k.is_empty());
    let initrd = string_property(vssd, INITRD_PROPERTY)?.filter(|i| !i.is_empty());
    let cmdline = string_property(vssd, CMDLINE_PROPERTY)?.unwrap_or_default();
    match kernel {
        Some(kernel) => Ok(Some(VmBoot::Kernel {
            kernel: kernel.into(),
            initrd: initrd.map(PathBuf::from),
            cmdline,
        })),
        None if initrd.is_some() || !cmdline.is_empty() => Err(HostError::invalid(format!(
            "{INITRD_PROPERTY} and {CMDLINE_PROPERTY} need {KERNEL_PROPERTY} (a firmware boot has neither)"
        ))),
        None => Ok(Some(VmBoot::Firmware)),
    }
}

/// A serial port a client sent: which COM port, and the socket its `Connection[0]` names
/// (`None`: not connected).
#[derive(Debug, PartialEq)]
pub struct RequestedSerialPort {
    pub port: u8,
    pub socket: Option<PathBuf>,
}

/// Reads a Msvm_SerialPortSettingData: the port from ElementName "COM n" or else the
/// InstanceID's `\Com\n` tail; the socket from Connection (an array of at most one path, or
/// one string; empty means not connected).
pub fn requested_serial_port(r: &Instance) -> Result<RequestedSerialPort, HostError> {
    let port = port_number(r).ok_or_else(|| {
        HostError::invalid(format!(
            "a {SERIAL_PORT_CLASS} needs ElementName \"COM 1\" or \"COM 2\" (or an InstanceID ending in \\Com\\1 or \\Com\\2)"
        ))
    })?;

    let connections: Vec<String> = match r.get("Connection") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    HostError::invalid("Connection must hold the socket path as a string")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(HostError::invalid("Connection must be an array of strings")),
    };
    if connections.len() > 1 {
        return Err(HostError::invalid(format!(
            "COM {port}: Connection holds one socket path, not {}",
            connections.len()
        )));
    }

    let socket = connections
        .into_iter()
        .next()
        .filter(|c| !c.is_empty())
        .map(PathBuf::from);
    Ok(RequestedSerialPort { port, socket })
}

fn port_number(r: &Instance) -> Option<u8> {
    let from_name = r
        .get("ElementName")
        .and_then(Value::as_str)
        .and_then(|n| n.trim().strip_prefix("COM"))
        .and_then(|n| n.trim().parse().ok());
    let from_id = || {
        r.get("InstanceID")
            .and_then(Value::as_str)
            .and_then(|id| id.rsplit_once("\\Com\\"))
            .and_then(|(_, n)| n.parse().ok())
    };
    from_name
        .or_else(from_id)
        .filter(|p| SERIAL_PORTS.contains(p))
}

fn string_property(r: &Instance, name: &str) -> Result<Option<String>, HostError> {
    match r.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(HostError::invalid(format!("{name} must be a string"))),
    }
}
