//! `cosnap vm|collection|snapshot|refpoint|job …`: the host's commands, over the same
//! [`cosnap_host::Host`] API the CIM-XML server calls.
//!
//! Exit codes: 3 not found; 4 invalid state, in use or already exists; 2 invalid
//! parameter (and clap's usage errors); 1 anything else.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use cosnap_disk::Format;
use cosnap_host::{DiskSpec, Host, Job, Nic, Vm, VmSpec};
use serde_json::json;

use crate::exit::{CmdResult, Context, FAILED, Failure, INVALID_STATE, NOT_FOUND, USAGE, fail};

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Define a VM over existing disk images.
    Define {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        #[arg(long = "memory-mb", default_value_t = 1024)]
        memory_mb: u64,
        /// A disk image (repeat for several; order = slot order).
        #[arg(long = "disk")]
        disks: Vec<PathBuf>,
        /// The format of a disk: raw, qcow2 or vhdx (repeatable; the n-th goes with the
        /// n-th --disk). A disk without one is probed, and the probe must agree with its
        /// file name (.raw/.img, .qcow2, .vhdx/.avhdx).
        #[arg(long = "disk-format", value_parser = parse_format)]
        disk_formats: Vec<Format>,
        // Help given as an attribute: in a doc comment rustdoc reads `[,SWITCH]` as a link.
        #[arg(long = "nic", help = "A network adapter: MAC[,SWITCH] (repeatable)")]
        nics: Vec<String>,
        /// Keep this id (a GUID) instead of generating one.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        run: crate::cmd_vm_run::RunArgs,
    },
    /// Define a VM from a libvirt domain XML file.
    ImportLibvirt { file: PathBuf },
    /// List VMs.
    List,
    /// Show a VM (disks at their active layers, in slot order).
    Show { vm: String },
    /// Destroy a VM (its snapshots must be destroyed first; it must be off).
    Destroy { vm: String },
    /// Start a VM under QEMU.
    Start { vm: String },
    /// Stop a running VM: the guest shuts down (--force: QEMU quits at once).
    Stop {
        vm: String,
        #[arg(long)]
        force: bool,
    },
    /// Pause a running VM.
    Pause { vm: String },
    /// Resume a paused VM.
    Resume { vm: String },
    /// Attach the terminal to a running VM's first serial port (end with Ctrl-D).
    Console { vm: String },
    /// A guest write onto the VM's active layer: LENGTH bytes of PATTERN at OFFSET.
    Write {
        vm: String,
        #[arg(long)]
        disk: u32,
        #[arg(long)]
        offset: u64,
        #[arg(long)]
        length: u64,
        /// Byte value 0..255 (decimal or 0x..).
        #[arg(long, value_parser = parse_byte)]
        pattern: u8,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CollectionKind {
    Vms,
    Collections,
}

#[derive(Subcommand, Debug)]
pub enum CollectionCmd {
    /// Define a collection.
    Define {
        name: String,
        /// CollectionID to use (a GUID); default a fresh one.
        #[arg(long)]
        id: Option<String>,
        #[arg(long = "type", value_enum, default_value = "vms")]
        kind: CollectionKind,
    },
    Rename {
        collection: String,
        new_name: String,
    },
    /// Add a VM (or, to a collection of collections, a collection).
    AddMember {
        collection: String,
        member: String,
    },
    RemoveMember {
        collection: String,
        member: String,
    },
    List,
    Show {
        collection: String,
    },
    Destroy {
        collection: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SnapshotKind {
    Standard,
    Recovery,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot every disk of every member VM at one point in time.
    Create {
        collection: String,
        #[arg(long = "type", value_enum, default_value = "standard")]
        kind: SnapshotKind,
    },
    List {
        #[arg(long)]
        collection: Option<String>,
    },
    Show {
        snapshot: String,
    },
    Destroy {
        snapshot: String,
    },
    Apply {
        snapshot: String,
    },
    /// Convert a recovery snapshot into a reference point.
    ToRefpoint {
        snapshot: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RefpointCmd {
    List {
        #[arg(long)]
        collection: Option<String>,
    },
    Show {
        refpoint: String,
    },
    Destroy {
        refpoint: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    List,
    Show {
        job: String,
    },
    /// Request Terminate (or Kill with --kill).
    Cancel {
        job: String,
        #[arg(long)]
        kill: bool,
    },
    Wait {
        job: String,
    },
}

fn parse_byte(s: &str) -> Result<u8, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse::<u8>(),
    };
    v.map_err(|_| format!("'{s}' is not a byte (0..255 or 0x00..0xff)"))
}

/// `--disk` paths with their `--disk-format`s, the n-th with the n-th (the rest probed).
fn disk_specs(disks: Vec<PathBuf>, formats: &[Format]) -> Result<Vec<DiskSpec>, Failure> {
    if formats.len() > disks.len() {
        return Err(Failure::new(
            USAGE,
            anyhow::anyhow!(
                "{} --disk-format given for {} --disk; the n-th --disk-format goes with the n-th --disk",
                formats.len(),
                disks.len()
            ),
        ));
    }
    Ok(disks
        .into_iter()
        .enumerate()
        .map(|(i, path)| DiskSpec {
            path,
            format: formats.get(i).copied(),
        })
        .collect())
}

fn parse_format(text: &str) -> Result<Format, String> {
    match Format::from_name(text) {
        Some(f) => Ok(f),
        None => Err(format!(
            "'{text}' is not a disk format (raw, qcow2 or vhdx)"
        )),
    }
}

pub fn open(ctx: &Context) -> Result<Host, Failure> {
    Host::open(&ctx.data_dir).map_err(fail)
}

/// Prints JSON on stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_json(v: &impl serde::Serialize) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

/// Waits for a job, with a progress bar on a terminal; a failed job becomes a Failure.
pub fn wait(host: &Host, job_id: &str, label: &str) -> Result<Job, Failure> {
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(label.to_string());
        Some(b)
    } else {
        None
    };
    let job = host
        .wait_job_with(job_id, |j| {
            if let Some(b) = &bar {
                b.set_position(j.percent.into());
            }
        })
        .map_err(fail)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if job.succeeded() {
        return Ok(job);
    }
    let msg = job
        .error_description
        .clone()
        .unwrap_or_else(|| "the job failed".into());
    let code = match (job.state, job.error_code) {
        (8 | 9, _) => FAILED,
        (_, 4 | 32773) => USAGE,
        (_, 5 | 32774 | 32775) => INVALID_STATE,
        _ => FAILED,
    };
    Err(Failure::new(
        code,
        anyhow::anyhow!("{label} failed (job {}): {msg}", job.id),
    ))
}

pub fn run_vm(ctx: &Context, cmd: VmCmd) -> CmdResult {
    let host = open(ctx)?;
    match cmd {
        VmCmd::Define {
            name,
            cpus,
            memory_mb,
            disks,
            disk_formats,
            nics,
            id,
            run,
        } => {
            let spec = VmSpec {
                id,
                name,
                cpus,
                memory_mb,
                disks: disk_specs(disks, &disk_formats)?,
                nics: nics.iter().map(|n| parse_nic(n)).collect(),
            };
            let vm = host.define_vm(&spec).map_err(fail)?;
            let vm = crate::cmd_vm_run::apply_run_args(&host, vm, run)?;
            print_vm_id(ctx, &vm);
        }
        VmCmd::ImportLibvirt { file } => {
            let xml = std::fs::read_to_string(&file)
                .map_err(|e| Failure::new(NOT_FOUND, anyhow::anyhow!("{}: {e}", file.display())))?;
            let base = file.parent().map(PathBuf::from).unwrap_or_default();
            let (spec, skipped) = cosnap_host::libvirt::parse_domain(&xml, &base).map_err(fail)?;
            for s in &skipped {
                eprintln!("cosnap: note: {s}");
            }
            let vm = host.define_vm(&spec).map_err(fail)?;
            print_vm_id(ctx, &vm);
        }
        VmCmd::List => {
            let vms = host.vms_with_state().map_err(fail)?;
            if ctx.json {
                print_json(&vms);
            } else {
                for vm in vms {
                    println!(
                        "{}  {:<20} {:<8} cpus={} memory={}MB disks={}",
                        vm.id,
                        vm.name,
                        vm.state.as_deref().unwrap_or("-"),
                        vm.cpus,
                        vm.memory_mb,
                        vm.disks.len()
                    );
                }
            }
        }
        VmCmd::Show { vm } => {
            let vm = host.vm_with_state(&vm).map_err(fail)?;
            if ctx.json {
                print_json(&vm);
            } else {
                print_vm(&vm);
            }
        }
        VmCmd::Destroy { vm } => host.destroy_vm(&vm).map_err(fail)?,
        VmCmd::Start { vm } => print_state(ctx, &host.start_vm(&vm).map_err(fail)?),
        VmCmd::Stop { vm, force } => print_state(ctx, &host.stop_vm(&vm, force).map_err(fail)?),
        VmCmd::Pause { vm } => print_state(ctx, &host.pause_vm(&vm).map_err(fail)?),
        VmCmd::Resume { vm } => print_state(ctx, &host.resume_vm(&vm).map_err(fail)?),
        VmCmd::Console { vm } => {
            let socket = host.console_socket(&vm).map_err(fail)?;
            crate::cmd_vm_run::console(&socket)?;
        }
        VmCmd::Write {
            vm,
            disk,
            offset,
            length,
            pattern,
        } => host
            .write_guest(&vm, disk, offset, length, pattern)
            .map_err(fail)?,
    }
    Ok(0)
}

/// `MAC[,SWITCH]` as given to `vm define --nic`.
fn parse_nic(text: &str) -> Nic {
    let mut parts = text.splitn(2, ',');
    Nic {
        mac: parts.next().unwrap_or_default().to_string(),
        switch_name: parts.next().map(str::to_string),
    }
}

fn print_vm_id(ctx: &Context, vm: &Vm) {
    if ctx.json {
        print_json(vm);
    } else {
        println!("{}", vm.id);
    }
}

/// After a state change: the VM as JSON, or its new state.
fn print_state(ctx: &Context, vm: &Vm) {
    if ctx.json {
        print_json(vm);
    } else {
        println!("{} {}", vm.id, vm.state.as_deref().unwrap_or("-"));
    }
}

fn print_vm(vm: &Vm) {
    println!(
        "{}  {}  {}\n  cpus {}  memory {} MB",
        vm.id,
        vm.name,
        vm.state.as_deref().unwrap_or("-"),
        vm.cpus,
        vm.memory_mb
    );
    for d in &vm.disks {
        println!(
            "  disk {}: {} ({})  base {}",
            d.index,
            d.path.display(),
            d.format,
            d.base_path.display()
        );
    }
    for n in &vm.nics {
        println!(
            "  nic {} {}",
            n.mac,
            n.switch_name.as_deref().unwrap_or("-")
        );
    }
}

pub fn run_collection(ctx: &Context, cmd: CollectionCmd) -> CmdResult {
    let host = open(ctx)?;
    let c = match cmd {
        CollectionCmd::Define { name, id, kind } => {
            let kind = match kind {
                CollectionKind::Vms => 0,
                CollectionKind::Collections => 1,
            };
            Some(
                host.define_collection(&name, id.as_deref(), kind)
                    .map_err(fail)?,
            )
        }
        CollectionCmd::Rename {
            collection,
            new_name,
        } => Some(
            host.rename_collection(&collection, &new_name)
                .map_err(fail)?,
        ),
        CollectionCmd::AddMember { collection, member } => {
            Some(host.add_member(&collection, &member).map_err(fail)?)
        }
        CollectionCmd::RemoveMember { collection, member } => {
            Some(host.remove_member(&collection, &member).map_err(fail)?)
        }
        CollectionCmd::Show { collection } => Some(host.collection(&collection).map_err(fail)?),
        CollectionCmd::Destroy { collection } => {
            host.destroy_collection(&collection).map_err(fail)?;
            None
        }
        CollectionCmd::List => {
            let all = host.collections().map_err(fail)?;
            if ctx.json {
                print_json(&all);
            } else {
                for c in all {
                    println!("{}  {:<20} members={}", c.id, c.name, c.members.len());
                }
            }
            None
        }
    };
    if let Some(c) = c {
        if ctx.json {
            print_json(&c);
        } else {
            println!("{}", c.id);
        }
    }
    Ok(0)
}

pub fn run_snapshot(ctx: &Context, cmd: SnapshotCmd) -> CmdResult {
    let host = open(ctx)?;
    match cmd {
        SnapshotCmd::Create { collection, kind } => {
            let ty = match kind {
                SnapshotKind::Standard => 1,
                SnapshotKind::Recovery => 2,
            };
            let job = host.start_create_snapshot(&collection, ty).map_err(fail)?;
            let job = wait(&host, &job, "snapshot")?;
            let id = job
                .created("Msvm_SnapshotCollection")
                .unwrap_or_default()
                .to_string();
            let snap = host.snapshot(&id).map_err(fail)?;
            if ctx.json {
                print_json(&snap);
            } else {
                println!("{id}");
            }
        }
        SnapshotCmd::List { collection } => {
            let all = host.snapshots(collection.as_deref()).map_err(fail)?;
            if ctx.json {
                print_json(&all);
            } else {
                for s in all {
                    let ty = if s.snapshot_type == 2 {
                        "recovery"
                    } else {
                        "standard"
                    };
                    println!("{}  {:<8} {}  {}", s.id, ty, s.created, s.name);
                }
            }
        }
        SnapshotCmd::Show { snapshot } => {
            let s = host.snapshot(&snapshot).map_err(fail)?;
            if ctx.json {
                print_json(&s);
            } else {
                println!("{}  {}  type {}", s.id, s.name, s.snapshot_type);
                for v in &s.vms {
                    for d in &v.disks {
                        println!(
                            "  {} disk {}: {} ({})",
                            v.vm_id,
                            d.index,
                            d.path.display(),
                            d.format
                        );
                    }
                }
            }
        }
        SnapshotCmd::Destroy { snapshot } => {
            let job = host.start_destroy_snapshot(&snapshot).map_err(fail)?;
            wait(&host, &job, "destroy snapshot")?;
        }
        SnapshotCmd::Apply { snapshot } => {
            let job = host.start_apply_snapshot(&snapshot).map_err(fail)?;
            wait(&host, &job, "apply snapshot")?;
        }
        SnapshotCmd::ToRefpoint { snapshot } => {
            let job = host.start_convert_to_refpoint(&snapshot).map_err(fail)?;
            let job = wait(&host, &job, "convert to reference point")?;
            let id = job
                .created("Msvm_ReferencePointCollection")
                .unwrap_or_default()
                .to_string();
            let rp = host.refpoint(&id).map_err(fail)?;
            if ctx.json {
                print_json(&rp);
            } else {
                println!("{id}");
            }
        }
    }
    Ok(0)
}

pub fn run_refpoint(ctx: &Context, cmd: RefpointCmd) -> CmdResult {
    let host = open(ctx)?;
    match cmd {
        RefpointCmd::List { collection } => {
            let all = host.refpoints(collection.as_deref()).map_err(fail)?;
            if ctx.json {
                print_json(&all);
            } else {
                for r in all {
                    println!("{}  {}  {}", r.id, r.created, r.name);
                }
            }
        }
        RefpointCmd::Show { refpoint } => {
            let r = host.refpoint(&refpoint).map_err(fail)?;
            if ctx.json {
                print_json(&r);
            } else {
                println!("{}  {}", r.id, r.name);
                for v in &r.vms {
                    for d in &v.disks {
                        println!(
                            "  {} disk {}: {}  {}",
                            v.vm_id,
                            d.index,
                            d.path.display(),
                            d.rct_id
                        );
                    }
                }
            }
        }
        RefpointCmd::Destroy { refpoint } => {
            let job = host.start_destroy_refpoint(&refpoint).map_err(fail)?;
            wait(&host, &job, "destroy reference point")?;
        }
    }
    Ok(0)
}

fn job_json(j: &Job) -> serde_json::Value {
    json!({
        "id": j.id, "job_type": j.job_type, "name": j.name, "state": j.state, "percent": j.percent,
        "error_code": j.error_code, "error_description": j.error_description, "cancellable": j.cancellable,
        "submitted": cosnap_host::util::rfc3339(j.submitted_ms),
        "finished": j.finished_ms.map(cosnap_host::util::rfc3339),
        "created": j.affected.iter().map(|(c, id)| json!({"class": c, "id": id})).collect::<Vec<_>>(),
    })
}

pub fn run_job(ctx: &Context, cmd: JobCmd) -> CmdResult {
    let host = open(ctx)?;
    let show = |j: &Job| {
        if ctx.json {
            print_json(&job_json(j));
        } else {
            println!(
                "{}  type {:<3} state {:<2} {:>3}%  {}{}",
                j.id,
                j.job_type,
                j.state,
                j.percent,
                j.name,
                j.error_description
                    .as_deref()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            );
        }
    };
    match cmd {
        JobCmd::List => {
            let all = host.jobs().map_err(fail)?;
            if ctx.json {
                print_json(&all.iter().map(job_json).collect::<Vec<_>>());
            } else {
                all.iter().for_each(show);
            }
        }
        JobCmd::Show { job } => show(&host.job(&job).map_err(fail)?),
        JobCmd::Cancel { job, kill } => {
            let code = host
                .request_job_state(&job, if kill { 5 } else { 4 })
                .map_err(fail)?;
            if code == 4097 {
                return Err(Failure::new(
                    INVALID_STATE,
                    anyhow::anyhow!("job {job} has ended or can no longer be cancelled"),
                ));
            }
        }
        JobCmd::Wait { job } => {
            let j = host.wait_job(&job).map_err(fail)?;
            show(&j);
            if !j.succeeded() {
                return Ok(FAILED);
            }
        }
    }
    Ok(0)
}

#[allow(dead_code)]
pub fn format_name(f: Format) -> &'static str {
    f.name()
}
