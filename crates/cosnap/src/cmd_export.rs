//! `cosnap export SNAPSHOT DIR …`, `cosnap export verify DIR` and `cosnap import DIR`.
//!
//! The export runs the same job as `ExportSnapshot` (see `cosnap_host::export`), except
//! that the CLI user may export into any directory they can write (no export roots) and a
//! relative DIR is taken relative to the current directory.
//!
//! Exit codes: 0 done; 1 failed (job Exception, access denied, verify found problems);
//! 2 invalid parameter; 3 snapshot or base not found; 4 invalid state (collision, change
//! information gone, in use).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use cosnap_export::BackupIntent;
use cosnap_host::export::{ExportRequest, Refusal, Roots};
use serde_json::json;

use crate::cmd_host::{open, wait};
use crate::exit::fail;
use crate::exit::{CmdResult, Context, FAILED, Failure, INVALID_STATE, NOT_FOUND, USAGE};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IntentArg {
    /// Differential disks are children of the base export's disks.
    PreserveChain,
    /// Differential disks are synthetic fulls that stand alone.
    Merge,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub sub: Option<ExportSub>,
    /// Snapshot collection id.
    #[arg(required = true)]
    pub snapshot: Option<String>,
    /// Directory to export into (created packages land inside it).
    #[arg(required = true)]
    pub export_dir: Option<PathBuf>,
    /// Wait for the job to end (else print the job id and return).
    #[arg(long)]
    pub wait: bool,
    /// Do not copy the disks (configuration and descriptor only).
    #[arg(long)]
    pub no_storage: bool,
    /// Put the package in its own sub-directory (several exports can share DIR).
    #[arg(long)]
    pub subdirectory: bool,
    /// Differential export: the snapshot or reference point collection id to diff against.
    #[arg(long)]
    pub base: Option<String>,
    /// What a differential is for (default preserve-chain).
    #[arg(long, value_enum)]
    pub intent: Option<IntentArg>,
    /// If the base's change information is gone, write a full export (recorded in the
    /// package) instead of failing.
    #[arg(long)]
    pub fallback_full: bool,
    /// Mode of the package's files, octal (default 0600, owner only; directories get the
    /// matching search bits).
    #[arg(long = "export-mode", value_name = "MODE", value_parser = cosnap_host::options::parse_mode)]
    pub export_mode: Option<u32>,
    /// Digest of the package manifest: sha256 (OVF's, the default) or blake3 (faster;
    /// verified by `cosnap export verify`, not by OVF tools).
    #[arg(long, value_name = "ALGORITHM", default_value = "sha256")]
    pub digest: cosnap_export::DigestAlgorithm,
}

#[derive(Subcommand, Debug)]
pub enum ExportSub {
    /// Check a package: every digest, every image, every chain parent. Exit 0 only if all is well.
    Verify { package_dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The package directory (where cosnap-package.json is).
    pub package_dir: PathBuf,
}

fn refusal(r: Refusal) -> Failure {
    let code = match r.code {
        4 | 6 => USAGE,
        5 | 32774 => INVALID_STATE,
        _ => FAILED,
    };
    Failure::new(code, anyhow::anyhow!("{r}"))
}

pub fn run_export(ctx: &Context, args: ExportArgs) -> CmdResult {
    if let Some(ExportSub::Verify { package_dir }) = args.sub {
        return run_verify(ctx, &package_dir);
    }
    let (Some(snapshot), Some(dir)) = (args.snapshot, args.export_dir) else {
        return Err(Failure::new(
            USAGE,
            anyhow::anyhow!("usage: cosnap export SNAPSHOT EXPORT_DIR [options]"),
        ));
    };
    let options = cosnap_host::HostOptions {
        export_digest: args.digest,
        ..Default::default()
    };
    let host = cosnap_host::Host::open_with(&ctx.data_dir, options).map_err(fail)?;
    let snap = host.snapshot(&snapshot).map_err(fail)?;
    let base = match &args.base {
        None => None,
        Some(b) => match host.snapshot(b) {
            Ok(s) => Some(s.id),
            Err(_) => Some(host.refpoint(b).map_err(fail)?.id),
        },
    };
    let dir = std::path::absolute(&dir)
        .map_err(|e| Failure::new(USAGE, anyhow::anyhow!("{}: {e}", dir.display())))?;
    let req = ExportRequest {
        snapshot: snap.id.clone(),
        export_dir: dir,
        copy_storage: !args.no_storage,
        create_subdirectory: args.subdirectory,
        base,
        intent: match args.intent {
            Some(IntentArg::Merge) => BackupIntent::Merge,
            _ => BackupIntent::PreserveChain,
        },
        allow_fallback_full: args.fallback_full,
        file_mode: args.export_mode,
    };
    let job_id = cosnap_host::export::start_export(&host, &req, Roots::Caller).map_err(refusal)?;
    if !args.wait {
        if ctx.json {
            println!("{}", json!({ "job": job_id }));
        } else {
            println!("{job_id}");
        }
        return Ok(0);
    }
    wait(&host, &job_id, "export")?;
    let path = cosnap_host::export::exported_path(&host, &snap.id, &job_id).ok_or_else(|| {
        Failure::new(
            FAILED,
            anyhow::anyhow!("the export job {job_id} ended but recorded no package"),
        )
    })?;
    let meta: serde_json::Value = std::fs::read(path.join(cosnap_export::PACKAGE_JSON))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "path": path,
                "job": job_id,
                "export_id": meta["export_id"],
                "kind": meta["kind"],
                "intent": meta["intent"],
                "fallback_to_full": meta["fallback_to_full"],
            }))
            .unwrap_or_default()
        );
    } else {
        if let Some(reason) = meta["fallback_to_full"].as_str() {
            eprintln!("cosnap: note: wrote a FULL export instead of a differential: {reason}");
        }
        println!("{}", path.display());
    }
    Ok(0)
}

fn run_verify(ctx: &Context, dir: &std::path::Path) -> CmdResult {
    let rep = cosnap_export::verify_package(dir).map_err(|e| {
        let code = if matches!(e, cosnap_export::ExportError::BadPackage { .. }) {
            FAILED
        } else {
            NOT_FOUND
        };
        Failure::new(code, anyhow::anyhow!("{e}"))
    })?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "ok": rep.ok(), "files_checked": rep.files_checked, "images_checked": rep.images_checked, "problems": rep.problems })).unwrap_or_default());
    } else if rep.ok() {
        println!(
            "OK: {} files, {} images checked",
            rep.files_checked, rep.images_checked
        );
    } else {
        for p in &rep.problems {
            eprintln!("cosnap: {p}");
        }
        eprintln!(
            "cosnap: {} problem(s) in {}",
            rep.problems.len(),
            dir.display()
        );
    }
    Ok(if rep.ok() { 0 } else { FAILED })
}

pub fn run_import(ctx: &Context, args: ImportArgs) -> CmdResult {
    let host = open(ctx)?;
    let bar = if std::io::stderr().is_terminal() && !ctx.json {
        let b = indicatif::ProgressBar::new(1000);
        b.set_message("import");
        Some(b)
    } else {
        None
    };
    let progress = |done: u64, total: u64| {
        if let (Some(b), Some(p)) = (&bar, (done.min(total) * 1000).checked_div(total)) {
            b.set_position(p);
        }
    };
    let res =
        cosnap_host::import::import_package(&host, &args.package_dir, &progress).map_err(fail)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&res).unwrap_or_default());
    } else {
        println!("collection {}", res.collection);
        for v in &res.vms {
            println!("vm {v}");
        }
    }
    Ok(0)
}
