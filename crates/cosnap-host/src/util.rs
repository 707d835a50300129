//! Small shared helpers: clocks and CIM datetimes, GUIDs, WMI path text, crash points.

use std::sync::atomic::{AtomicU64, Ordering};

use cosnap_cim::{ObjectPath, Value};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// CIM timestamp `yyyymmddHHMMSS.mmmmmm+000` (UTC) for milliseconds since the epoch.
pub fn cim_timestamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}.{:06}+000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// CIM interval `ddddddddHHMMSS.mmmmmm:000` for a duration in milliseconds.
pub fn cim_interval(ms: i64) -> String {
    let ms = ms.max(0);
    let total_s = ms / 1000;
    format!(
        "{:08}{:02}{:02}{:02}.{:06}:000",
        total_s / 86400,
        (total_s / 3600) % 24,
        (total_s / 60) % 60,
        total_s % 60,
        (ms % 1000) * 1000
    )
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

/// WMI object-path text: `\\HOST\root\virtualization\v2:Class.Key="v",Key2="v2"`, with
/// backslashes and double quotes inside values escaped by a backslash.
pub fn wmi_path_text(host: &str, path: &ObjectPath) -> String {
    let mut out = format!("\\\\{host}\\root\\virtualization\\v2:{}", path.class_name);
    for (i, (name, value)) in path.keys.iter().enumerate() {
        out.push(if i == 0 { '.' } else { ',' });
        out.push_str(name);
        out.push('=');
        match value {
            Value::String(s) | Value::Datetime(s) => {
                out.push('"');
                for c in s.chars() {
                    if c == '\\' || c == '"' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            Value::Boolean(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
            other => out.push_str(&other.as_u64().map(|v| v.to_string()).unwrap_or_default()),
        }
    }
    out
}

/// Parses WMI object-path text (`[\\HOST\namespace:]Class.Key="v",…` or `Class="v"` for a
/// single unnamed key is not accepted). Returns `None` on malformed text.
pub fn parse_wmi_path(text: &str) -> Option<ObjectPath> {
    let text = text.trim();
    let mut rest = text;
    let mut host = None;
    let mut namespace = None;
    if let Some(r) = rest
        .strip_prefix("\\\\")
        .or_else(|| rest.strip_prefix("//"))
    {
        let end = r.find(['\\', '/'])?;
        host = Some(r[..end].to_string());
        rest = &r[end + 1..];
    }
    // Namespace ends at the first ':' that precedes the class name (namespace has no '.'/'=').
    if let Some(colon) = rest.find(':') {
        let before = &rest[..colon];
        if !before.contains(['.', '=', '"']) {
            namespace = Some(cosnap_cim::normalize_namespace(before));
            rest = &rest[colon + 1..];
        }
    }
    let dot = rest.find('.')?;
    let class_name = rest[..dot].trim();
    if class_name.is_empty()
        || !class_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return None;
    }
    let mut keys = Vec::new();
    let mut chars = rest[dot + 1..].chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        chars.next()?; // '='
        let name = name.trim().to_string();
        if name.is_empty() {
            return None;
        }
        let value = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next()? {
                    '\\' => v.push(chars.next()?),
                    '"' => break,
                    c => v.push(c),
                }
            }
            Value::String(v)
        } else {
            let mut v = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                v.push(c);
                chars.next();
            }
            let v = v.trim();
            if v.eq_ignore_ascii_case("true") {
                Value::Boolean(true)
            } else if v.eq_ignore_ascii_case("false") {
                Value::Boolean(false)
            } else {
                Value::Uint64(v.parse().ok()?)
            }
        };
        keys.push((name, value));
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return None,
        }
    }
    Some(ObjectPath {
        host,
        namespace,
        class_name: class_name.to_string(),
        keys,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_text_round_trip() {
        let p = ObjectPath::new("Msvm_VirtualSystemSettingData")
            .with_key("InstanceID", Value::String("Microsoft:A\\B\"c".into()));
        let text = wmi_path_text("HOST", &p);
        assert_eq!(
            text,
            "\\\\HOST\\root\\virtualization\\v2:Msvm_VirtualSystemSettingData.InstanceID=\"Microsoft:A\\\\B\\\"c\""
        );
        let back = parse_wmi_path(&text).unwrap();
        assert_eq!(back.class_name, p.class_name);
        assert_eq!(back.keys, p.keys);
        assert_eq!(back.host.as_deref(), Some("HOST"));
        assert_eq!(back.namespace.as_deref(), Some("root/virtualization/v2"));
    }

    #[test]
    fn malformed_paths_are_rejected() {
        for bad in [
            "",
            "Msvm_X",
            "Msvm_X.",
            "Msvm_X.Id=\"unterminated",
            "Bad Class.Id=\"x\"",
            "Msvm_X.Id=\"a\"junk",
        ] {
            assert!(parse_wmi_path(bad).is_none(), "{bad}");
        }
        let two = parse_wmi_path(
            "Msvm_ReferencePointCollection.CollectionID=\"a\",VirtualSystemCollectionId=\"b\"",
        )
        .unwrap();
        assert_eq!(two.keys.len(), 2);
    }

    #[test]
    fn datetimes() {
        assert_eq!(cim_interval(300_000), "00000000000500.000000:000");
        assert_eq!(cim_timestamp(0), "19700101000000.000000+000");
    }
}
