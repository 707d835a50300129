//! Giving memory back after bursts (glibc malloc).
//!
//! Measured with `benches/wbem/hostile.py` (100 clients pushing 4 MiB bodies): with glibc's
//! defaults the server stayed at ~100 MiB after the burst, up from 13 MiB. Two causes:
//! glibc raises its mmap threshold each time a large mmapped block is freed, so after the
//! first few bodies the 4 MiB buffers come from the heaps of up to 16 arenas, where freed
//! memory stays mapped; and nothing trims those heaps. Hence: a fixed mmap threshold
//! (buffers above it are mapped and unmapped on their own), at most [`ARENAS`] arenas, and
//! `malloc_trim` once the server goes idle after activity. A different allocator would be
//! a new dependency doing the same; these three calls are enough (figures in the README).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::http::Transport;

/// Allocations from this size up are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 256 * 1024;
/// Most malloc arenas (glibc's default is 8 per core).
pub const ARENAS: usize = 4;
/// How often the trimmer looks for a burst that has ended.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Sets the allocator options above; call once, early (before the server's threads start).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc parameters; it is called at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS as libc::c_int);
    }
}

/// Returns free heap memory to the system (no-op off glibc).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims once requests have been answered since the last look and none is running now.
pub async fn trim_after_bursts(transport: Arc<Transport>) {
    let mut seen = transport.answered.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        let now = transport.answered.load(Ordering::Relaxed);
        let idle = transport.in_flight.available_permits() == transport.limits.max_in_flight.max(1);
        if now != seen && idle {
            seen = now;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}
