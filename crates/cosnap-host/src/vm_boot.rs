//! What a running VM needs besides its disks: how it boots (a kernel, initrd and command line,
//! or the firmware booting disk 0) and its second serial port, stored per VM in `vm_boot`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{HostError, Result};
use crate::host::Host;

/// How a VM boots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VmBoot {
    /// Direct kernel boot.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The firmware boots the first disk (a VM defined without a kernel).
    #[default]
    Firmware,
}

impl VmBoot {
    /// Kernel, initrd and command line as text, all `None` for a firmware boot: the form
    /// both the `vm_boot` row and the VSSD's boot properties hold.
    pub(crate) fn text_parts(&self) -> (Option<String>, Option<String>, Option<String>) {
        match self {
            VmBoot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => (
                Some(text(kernel)),
                initrd.as_deref().map(text),
                Some(cmdline.clone()),
            ),
            VmBoot::Firmware => (None, None, None),
        }
    }
}

/// The run settings of a VM: boot and COM2 (the guest's ttyS1 served as a Unix socket server
/// at this path).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VmRunSettings {
    pub boot: VmBoot,
    pub com2: Option<PathBuf>,
}

impl Host {
    /// Checks run settings named over the API: kernel and initrd must lie under a storage root
    /// (as disk images do) and are replaced by what they resolved to; a COM2 socket path must
    /// lie under a storage root too, since QEMU creates it.
    pub fn check_api_run_settings(&self, settings: &mut VmRunSettings) -> Result<()> {
        let roots = &self.inner.options.storage_roots;
        let data_dir = &self.inner.data_dir;
        if let VmBoot::Kernel { kernel, initrd, .. } = &mut settings.boot {
            *kernel = crate::options::check_api_disk_path(kernel, roots, data_dir)?;
            if let Some(initrd) = initrd {
                *initrd = crate::options::check_api_disk_path(initrd, roots, data_dir)?;
            }
        }
        if let Some(com2) = &settings.com2 {
            let parent = com2.parent().unwrap_or(Path::new("/"));
            let name = com2.file_name().ok_or_else(|| {
                HostError::invalid(format!("COM2 socket {} has no file name", com2.display()))
            })?;
            let parent = crate::options::check_api_disk_path(parent, roots, data_dir)?;
            settings.com2 = Some(parent.join(name));
        }
        Ok(())
    }

    /// Records a VM's run settings (replacing earlier ones). Kernel and initrd must be files;
    /// all paths are stored absolute.
    pub fn set_run_settings(&self, id_or_name: &str, settings: &VmRunSettings) -> Result<()> {
        let settings = absolute_settings(settings)?;
        let vm = self.vm(id_or_name)?;
        let conn = self.db();
        let (kernel, initrd, cmdline) = settings.boot.text_parts();
        conn.execute(
            "INSERT OR REPLACE INTO vm_boot (vm_id, kernel, initrd, cmdline, com2) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![vm.id, kernel, initrd, cmdline, settings.com2.as_deref().map(text)],
        )?;
        Ok(())
    }
}

/// kernel, initrd, cmdline, com2 (a NULL kernel: firmware boot).
type BootRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A VM's run settings; a VM without a row boots from firmware and has no COM2.
pub(crate) fn load_run_settings(conn: &Connection, vm_id: &str) -> Result<VmRunSettings> {
    let row: Option<BootRow> = conn
        .query_row(
            "SELECT kernel, initrd, cmdline, com2 FROM vm_boot WHERE vm_id = ?1",
            [vm_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((kernel, initrd, cmdline, com2)) = row else {
        return Ok(VmRunSettings::default());
    };
    let boot = match kernel {
        Some(kernel) => VmBoot::Kernel {
            kernel: kernel.into(),
            initrd: initrd.map(PathBuf::from),
            cmdline: cmdline.unwrap_or_default(),
        },
        None => VmBoot::Firmware,
    };
    Ok(VmRunSettings {
        boot,
        com2: com2.map(PathBuf::from),
    })
}

fn absolute_settings(settings: &VmRunSettings) -> Result<VmRunSettings> {
    let file = |path: &Path, what: &str| -> Result<PathBuf> {
        let resolved = path
            .canonicalize()
            .map_err(|e| HostError::not_found(format!("{what} {}: {e}", path.display())))?;
        if !resolved.is_file() {
            return Err(HostError::invalid(format!(
                "{what} {} is not a file",
                path.display()
            )));
        }
        Ok(resolved)
    };
    let boot = match &settings.boot {
        VmBoot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => VmBoot::Kernel {
            kernel: file(kernel, "kernel")?,
            initrd: initrd.as_deref().map(|i| file(i, "initrd")).transpose()?,
            cmdline: cmdline.clone(),
        },
        VmBoot::Firmware => VmBoot::Firmware,
    };
    let com2 = settings
        .com2
        .as_deref()
        .map(|c| std::path::absolute(c).map_err(HostError::from))
        .transpose()?;
    Ok(VmRunSettings { boot, com2 })
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
