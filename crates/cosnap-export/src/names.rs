//! Safe file names from names people and clients choose (VM, collection and snapshot
//! names). Whatever the input, the result is one plain path component: never empty, never
//! `.` or `..`, never hidden, no separators, at most [`MAX_COMPONENT`] bytes.

/// Longest component we produce (bytes); well under every Linux file system's 255.
pub const MAX_COMPONENT: usize = 80;

/// Keeps ASCII letters, digits, `-`, `_`, `.` and spaces; every other character becomes
/// `_`. Leading dots and spaces are dropped (no hidden files), runs of `_` and `.` are
/// collapsed (no `..` anywhere), and an empty result becomes `unnamed`.
pub fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_COMPONENT));
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
            c
        } else {
            '_'
        };
        // Collapsed runs: no `..` anywhere, even inside a component.
        if (c == '_' || c == '.') && out.ends_with(c) {
            continue;
        }
        out.push(c);
        if out.len() >= MAX_COMPONENT {
            break;
        }
    }
    let trimmed = out
        .trim_start_matches(['.', ' '])
        .trim_end_matches([' ', '.']);
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
        assert_eq!(sanitize("web tier (prod)"), "web tier _prod_");
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_COMPONENT);
        assert_eq!(sanitize("Ünïcödé"), "_n_c_d_");
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
