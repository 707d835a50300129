//! `cosnap serve` and `cosnap user …`.

use clap::{Args, Subcommand};

use crate::exit::{CmdResult, Context};

#[derive(Args, Debug)]
pub struct ServeArgs {}

#[derive(Subcommand, Debug)]
pub enum UserCmd {}

pub fn run_serve(_ctx: &Context, _args: ServeArgs) -> CmdResult {
    Err(crate::exit::Failure::new(crate::exit::FAILED, anyhow::anyhow!("serve is not built yet")))
}

pub fn run_user(_ctx: &Context, cmd: UserCmd) -> CmdResult {
    match cmd {}
}
