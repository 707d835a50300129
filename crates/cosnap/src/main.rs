//! `cosnap`: the command line people type, and `cosnap serve`.

mod cmd_demo;
mod cmd_disk;
mod cmd_export;
mod cmd_host;
mod cmd_serve;
mod cmd_vm_run;
mod exit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Consistent snapshots and exports of groups of virtual machines.
#[derive(Parser, Debug)]
#[command(name = "cosnap", version, about)]
pub struct Cli {
    /// Data directory of the repository.
    #[arg(
        long,
        global = true,
        env = "COSNAP_DATA_DIR",
        default_value = "./cosnap-data"
    )]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect, create, write, convert, compare and check disk images.
    #[command(subcommand)]
    Disk(cmd_disk::DiskCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(cmd_host::VmCmd),
    /// VM collections (groups).
    #[command(subcommand)]
    Collection(cmd_host::CollectionCmd),
    /// Collection snapshots.
    #[command(subcommand)]
    Snapshot(cmd_host::SnapshotCmd),
    /// Collection reference points.
    #[command(subcommand)]
    Refpoint(cmd_host::RefpointCmd),
    /// Jobs of long operations.
    #[command(subcommand)]
    Job(cmd_host::JobCmd),
    /// Build a demo collection in a fresh data directory and run the main job on it.
    Demo(cmd_demo::DemoArgs),
    /// Export a snapshot collection, or verify an export package.
    Export(cmd_export::ExportArgs),
    /// Define the VMs and the collection of an export package again.
    Import(cmd_export::ImportArgs),
    /// Serve CIM-XML over HTTP(S).
    Serve(cmd_serve::ServeArgs),
    /// Users allowed to call the server.
    #[command(subcommand)]
    User(cmd_serve::UserCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COSNAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ctx = exit::Context {
        data_dir: cli.data_dir.clone(),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Disk(cmd) => cmd_disk::run(&ctx, cmd),
        Command::Vm(cmd) => cmd_host::run_vm(&ctx, cmd),
        Command::Collection(cmd) => cmd_host::run_collection(&ctx, cmd),
        Command::Snapshot(cmd) => cmd_host::run_snapshot(&ctx, cmd),
        Command::Refpoint(cmd) => cmd_host::run_refpoint(&ctx, cmd),
        Command::Job(cmd) => cmd_host::run_job(&ctx, cmd),
        Command::Demo(args) => cmd_demo::run_demo(&ctx, args),
        Command::Export(args) => cmd_export::run_export(&ctx, args),
        Command::Import(args) => cmd_export::run_import(&ctx, args),
        Command::Serve(args) => cmd_serve::run_serve(&ctx, args),
        Command::User(cmd) => cmd_serve::run_user(&ctx, cmd),
    };
    exit::finish(result)
}
