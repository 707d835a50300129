//! Safe file names from names people and clients choose (VM, collection and snapshot
//! names). Whatever the input, the result is one plain path component: never empty, never
//! `.` or `..`, never hidden, no separators, at most [`MAX_COMPONENT`] bytes.

/// Longest component we produce (bytes); well under every Linux file system's 255.
pub const MAX_COMPONENT: usize = 80;

/// Keeps ASCII letters, digits, `-`, `_` and `.`; every other character (spaces included)
/// becomes `_`. A run of `_` and `-` that holds a `_` shrinks to one `_` (so
/// `"web tier - (prod)"` gives `web_tier_prod`), runs of `.` shrink to one (no `..`
/// anywhere), and leading `.`, `_`, `-` (no hidden files, nothing that reads as a command
/// option) and trailing `_`, `.`, `-` are dropped. An empty result becomes `unnamed`.
/// Names stay readable and need no quoting in a shell.
pub fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_COMPONENT));
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            c
        } else {
            '_'
        };
        match c {
            '.' if out.ends_with('.') => continue,
            '_' => {
                // Fold the separators before it into this one `_`.
                let kept = out.trim_end_matches(['_', '-']).len();
                out.truncate(kept);
                out.push('_');
            }
            '-' if out.ends_with('_') => continue,
            _ => out.push(c),
        }
        if out.len() >= MAX_COMPONENT {
            break;
        }
    }
    let trimmed = out
        .trim_start_matches(['.', '_', '-'])
        .trim_end_matches(['_', '.', '-']);
    if trimmed.is_empty() {
        "unnamed".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Percent-encodes what an OVF `href` (a URI reference) may not hold literally.
pub fn href_encode(rel: &str) -> String {
    let mut out = String::with_capacity(rel.len());
    for b in rel.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`href_encode`]; `None` for malformed escapes or non-UTF-8 results.
pub fn href_decode(href: &str) -> Option<String> {
    let bytes = href.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = href.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_one_component() {
        for evil in [
            "..",
            ".",
            "../../etc",
            "/abs/path",
            "a/../../b",
            "",
            "...",
            " .. ",
            "\0x",
            "a\\b",
        ] {
            let s = sanitize(evil);
            assert!(!s.is_empty());
            assert!(
                !s.contains('/') && !s.contains('\\') && !s.contains('\0'),
                "{evil:?} -> {s:?}"
            );
            assert!(!s.starts_with('.'), "{evil:?} -> {s:?}");
            assert!(!s.contains(".."), "{evil:?} -> {s:?}");
        }
        assert_eq!(sanitize("web tier (prod)"), "web_tier_prod");
        assert_eq!(
            sanitize("demo-group - (2026-11-25T10:26:12.955Z)"),
            "demo-group_2026-11-25T10_26_12.955Z"
        );
        assert_eq!(sanitize("-rf --all"), "rf_all");
        assert_eq!(sanitize("a-_-b__c"), "a_b_c");
        assert_eq!(sanitize("vm-1"), "vm-1");
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_COMPONENT);
        assert_eq!(sanitize("Ünïcödé"), "n_c_d");
    }

    #[test]
    fn href_round_trip() {
        let p = "vm_1/Virtual Hard Disks/disk 1%.qcow2";
        let e = href_encode(p);
        assert!(!e.contains(' '));
        assert_eq!(href_decode(&e).unwrap(), p);
        assert!(href_decode("%zz").is_none());
    }
}
