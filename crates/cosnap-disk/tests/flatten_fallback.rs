//! The copy engine's pread/pwrite path (what runs when copy_file_range is refused, e.g.
//! EXDEV across file systems, or O_DIRECT reads are): forced with COSNAP_NO_COPY_FILE_RANGE,
//! same bytes (the digesting copy then skips O_DIRECT source reads too).
//! One test per binary: it sets a process-wide environment variable.

mod copy_paths;

#[test]
fn read_write_fallback_gives_the_same_bytes() {
    // SAFETY: the only test in this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var("COSNAP_NO_COPY_FILE_RANGE", "1") };
    copy_paths::flattens_give_the_same_bytes_and_digest();
}
