//! `cosnap disk …`: image commands over cosnap-disk.

use clap::Subcommand;

use crate::exit::{CmdResult, Context};

#[derive(Subcommand, Debug)]
pub enum DiskCmd {}

pub fn run(_ctx: &Context, cmd: DiskCmd) -> CmdResult {
    match cmd {}
}
