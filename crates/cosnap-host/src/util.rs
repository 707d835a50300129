//! Small shared helpers: clocks, GUIDs, the host name, crash points.

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 text for JSON output.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string().to_ascii_uppercase()
}

/// Normalises a GUID-like id for comparison (case-insensitive, braces optional).
pub fn norm_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_uppercase()
}

static CRASH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Test-only fault injection for the crash harness. `COSNAP_CRASH_AT=N` kills the process
/// with SIGKILL at the N-th crash point it reaches (1-based); `COSNAP_CRASH_TRACE=1`
/// prints every crash point reached on stderr. Unset in production: one env lookup.
pub fn crash_point(name: &str) {
    let n = CRASH_COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    if std::env::var_os("COSNAP_CRASH_TRACE").is_some() {
        eprintln!("cosnap-crash-point {n} {name}");
    }
    if let Some(at) = std::env::var("COSNAP_CRASH_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        && at == n
    {
        // SAFETY: raising a signal in our own process.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// The host name used in object paths and service keys.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name.to_ascii_uppercase()
    }
}
