//! Helpers shared by cosnap's integration tests, so each test file keeps only what it tests.
//!
//! Used as a dev-dependency only (`publish = false`). It depends on no cosnap crate, so
//! any crate's tests can use it without a dependency cycle:
//! - [`cli`]: run a program under test (the `cosnap` binary) with fixed leading arguments;
//! - [`http`]: Basic credentials and response heads for raw HTTP exchanges;
//! - [`process`]: run a command and capture its exit code and output;
//! - [`qemu`]: qemu-img as the oracle (check, compare) and [`require_qemu!`] for the tests
//!   that skip where qemu is absent;
//! - [`model`]: expected guest bytes, as a sparse raw file or in memory;
//! - [`records`]: the consistency checker for the test guest's records;
//! - [`guest`](mod@guest): the running-VM test guest (built on first use), serial waits, pid guards;
//! - [`tmpfs`]: a small tmpfs for the disk-full tests.

pub mod cli;
pub mod guest;
pub mod http;
pub mod model;
pub mod process;
pub mod qemu;
pub mod records;
pub mod tmpfs;

pub use cli::{Cli, Outcome};
pub use guest::{PidGuard, guest, wait_for_text};
pub use model::{Model, RawModel, pattern};
pub use process::{ok, p, run};
pub use qemu::{
    have_qemu, qcow2_overlay, qcow2_rebase_unsafe, qemu_check_as, qemu_check_clean, qemu_compare,
    qemu_compare_raw, qemu_img, qemu_io, qemu_same,
};
pub use tmpfs::SmallTmpfs;
