//! `cosnap export …` and `cosnap import …`.

use clap::Args;

use crate::exit::{CmdResult, Context};

#[derive(Args, Debug)]
pub struct ExportArgs {}

#[derive(Args, Debug)]
pub struct ImportArgs {}

pub fn run_export(_ctx: &Context, _args: ExportArgs) -> CmdResult {
    Err(crate::exit::Failure::new(crate::exit::FAILED, anyhow::anyhow!("export is not built yet")))
}

pub fn run_import(_ctx: &Context, _args: ImportArgs) -> CmdResult {
    Err(crate::exit::Failure::new(crate::exit::FAILED, anyhow::anyhow!("import is not built yet")))
}
