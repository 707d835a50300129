//! Reads a libvirt domain XML into a [`VmSpec`]: name, vCPUs, memory, file-backed disks
//! with their driver format, interfaces with MAC and (bridge/network) switch name.
//! Non-file disks (block devices, network disks, CD-ROMs) are skipped with a reason.

use std::path::PathBuf;

use cosnap_disk::Format;

use crate::error::{HostError, Result};
use crate::model::{DiskSpec, Nic, VmSpec};

/// Parses the domain XML. `base_dir` resolves relative disk paths.
pub fn parse_domain(xml: &str, base_dir: &std::path::Path) -> Result<(VmSpec, Vec<String>)> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| HostError::invalid(format!("not a libvirt domain XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(HostError::invalid(format!(
            "root element is <{}>, expected <domain>",
            root.tag_name().name()
        )));
    }

    let child = |name: &str| root.children().find(|n| n.has_tag_name(name));
    let name = child("name")
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| HostError::invalid("the domain has no <name>"))?;
    let cpus: u32 = child("vcpu")
        .and_then(|n| n.text())
        .map(|t| {
            t.trim()
                .parse()
                .map_err(|_| HostError::invalid(format!("<vcpu> '{t}' is not a number")))
        })
        .transpose()?
        .unwrap_or(1);
    let memory_mb = match child("memory").or_else(|| child("currentMemory")) {
        Some(m) => memory_mb(m)?,
        None => 1024,
    };

    let mut found = Devices::default();
    if let Some(devices) = child("devices") {
        for dev in devices.children().filter(|n| n.is_element()) {
            match dev.tag_name().name() {
                "disk" => found.add_disk(dev, base_dir)?,
                "interface" => found.add_interface(dev),
                _ => {}
            }
        }
    }

    Ok((
        VmSpec {
            id: None,
            name,
            cpus,
            memory_mb,
            disks: found.disks,
            nics: found.nics,
        },
        found.skipped,
    ))
}

/// `<memory unit="…">` in MiB (at least 1).
fn memory_mb(m: roxmltree::Node) -> Result<u64> {
    let value: u64 = m
        .text()
        .unwrap_or("")
        .trim()
        .parse()
        .map_err(|_| HostError::invalid("<memory> is not a number"))?;
    let unit = m.attribute("unit").unwrap_or("KiB");
    let bytes: u128 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1024,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(HostError::invalid(format!("unknown memory unit '{other}'"))),
    };
    Ok(((u128::from(value) * bytes) >> 20)
        .max(1)
        .min(u128::from(u64::MAX)) as u64)
}

/// The domain's devices as read so far, and why others were skipped.
#[derive(Default)]
struct Devices {
    disks: Vec<DiskSpec>,
    nics: Vec<Nic>,
    skipped: Vec<String>,
}

impl Devices {
    /// A `<disk>`: file-backed disks with their driver format; others are skipped.
    fn add_disk(&mut self, dev: roxmltree::Node, base_dir: &std::path::Path) -> Result<()> {
        let kind = dev.attribute("type").unwrap_or("file");
        let device = dev.attribute("device").unwrap_or("disk");
        let source = dev
            .children()
            .find(|n| n.has_tag_name("source"))
            .and_then(|s| s.attribute("file"));
        let ("file", "disk", Some(file)) = (kind, device, source) else {
            self.skipped.push(format!(
                "disk type={kind} device={device} skipped (only file-backed disks are imported)"
            ));
            return Ok(());
        };

        let format = dev
            .children()
            .find(|n| n.has_tag_name("driver"))
            .and_then(|d| d.attribute("type"))
            .map(|t| {
                Format::from_name(t).ok_or_else(|| {
                    HostError::invalid(format!(
                        "disk {file}: format '{t}' is not supported (vhdx, qcow2, raw)"
                    ))
                })
            })
            .transpose()?;
        let mut path = PathBuf::from(file);
        if path.is_relative() {
            path = base_dir.join(path);
        }
        self.disks.push(DiskSpec { path, format });
        Ok(())
    }

    /// An `<interface>`: its MAC and the bridge, network or device it connects to.
    fn add_interface(&mut self, dev: roxmltree::Node) {
        let mac = dev
            .children()
            .find(|n| n.has_tag_name("mac"))
            .and_then(|m| m.attribute("address"));
        let source = dev.children().find(|n| n.has_tag_name("source"));
        let switch = source.and_then(|s| {
            s.attribute("bridge")
                .or(s.attribute("network"))
                .or(s.attribute("dev"))
        });
        match mac {
            Some(mac) => self.nics.push(Nic {
                mac: mac.to_string(),
                switch_name: switch.map(str::to_string),
            }),
            None => self
                .skipped
                .push("interface without <mac address=…> skipped".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_domain() {
        let xml = r#"<domain type='kvm'><name>web1</name><memory unit='GiB'>2</memory><vcpu placement='static'>4</vcpu>
          <devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/a.qcow2'/><target dev='vda'/></disk>
            <disk type='file' device='cdrom'><source file='/iso/x.iso'/></disk>
            <disk type='block' device='disk'><source dev='/dev/sdb'/></disk>
            <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/></interface>
          </devices></domain>"#;
        let (spec, skipped) = parse_domain(xml, std::path::Path::new("/")).unwrap();
        assert_eq!(spec.name, "web1");
        assert_eq!(spec.cpus, 4);
        assert_eq!(spec.memory_mb, 2048);
        assert_eq!(
            spec.disks,
            vec![DiskSpec {
                path: "/var/lib/a.qcow2".into(),
                format: Some(Format::Qcow2)
            }]
        );
        assert_eq!(
            spec.nics,
            vec![Nic {
                mac: "52:54:00:12:34:56".into(),
                switch_name: Some("br0".into())
            }]
        );
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_domain("<notdomain/>", std::path::Path::new("/")).is_err());
        assert!(
            parse_domain(
                "<domain><vcpu>x</vcpu><name>a</name></domain>",
                std::path::Path::new("/")
            )
            .is_err()
        );
        assert!(parse_domain("<<<", std::path::Path::new("/")).is_err());
    }
}
