//! The digesting copy's opt-in `O_DIRECT` path (COSNAP_DIRECT_IO: reads and aligned writes
//! bypass the page cache): same bytes and the same digest as the page-cache default.
//! One test per binary: it sets a process-wide environment variable.

mod copy_paths;

#[test]
fn direct_io_gives_the_same_bytes_and_digest() {
    // SAFETY: the only test in this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var("COSNAP_DIRECT_IO", "1") };
    copy_paths::flattens_give_the_same_bytes_and_digest();
}
