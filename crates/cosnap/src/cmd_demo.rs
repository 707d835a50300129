//! `cosnap demo`: picks the data directory and the story — the live one (running guests under
//! QEMU) when QEMU and the test guest are here, else the offline one, with what to install.

mod guest;
mod live;
mod offline;
mod started;
mod steps;

use std::path::PathBuf;

use clap::Args;
use cosnap_host::Host;

use crate::exit::fail;
use crate::exit::{CmdResult, Context};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The test guest's directory (vmlinuz, initrd.gz) for the live story; else
    /// $COSNAP_GUEST_DIR, else target/guest beside this binary's target directory.
    #[arg(long, value_name = "DIR")]
    guest_dir: Option<PathBuf>,
    /// Run the offline story (VMs switched off, guest writes by cosnap) even when QEMU and
    /// the guest are here.
    #[arg(long)]
    offline: bool,
}

pub fn run_demo(ctx: &Context, args: DemoArgs) -> CmdResult {
    let guest = match args.offline {
        true => None,
        false => guest::find(args.guest_dir.as_deref())
            .inspect_err(|missing| println!("{missing}\n"))
            .ok(),
    };

    let dir = steps::pick_dir(&ctx.data_dir);
    let images = dir.join("images");
    cosnap_host::modes::create_private_dir(&images).map_err(fail)?;
    let host = Host::open(&dir).map_err(fail)?;

    match guest {
        Some(guest) => live::run(&host, &guest),
        None => offline::run(&host),
    }
}
