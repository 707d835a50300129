//! `cosnap vm|collection|snapshot|refpoint|job|demo …`: the host's commands.

use clap::{Args, Subcommand};

use crate::exit::{CmdResult, Context};

#[derive(Subcommand, Debug)]
pub enum VmCmd {}
#[derive(Subcommand, Debug)]
pub enum CollectionCmd {}
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {}
#[derive(Subcommand, Debug)]
pub enum RefpointCmd {}
#[derive(Subcommand, Debug)]
pub enum JobCmd {}
#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn run_vm(_ctx: &Context, cmd: VmCmd) -> CmdResult {
    match cmd {}
}
pub fn run_collection(_ctx: &Context, cmd: CollectionCmd) -> CmdResult {
    match cmd {}
}
pub fn run_snapshot(_ctx: &Context, cmd: SnapshotCmd) -> CmdResult {
    match cmd {}
}
pub fn run_refpoint(_ctx: &Context, cmd: RefpointCmd) -> CmdResult {
    match cmd {}
}
pub fn run_job(_ctx: &Context, cmd: JobCmd) -> CmdResult {
    match cmd {}
}
pub fn run_demo(_ctx: &Context, _args: DemoArgs) -> CmdResult {
    Err(crate::exit::Failure::new(crate::exit::FAILED, anyhow::anyhow!("demo is not built yet")))
}
