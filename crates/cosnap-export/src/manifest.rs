//! The package manifest: one line per file, `SHA256(relative/path)= hex`, OVF style
//! (DSP0243 §5.1). The algorithm is named on every line; only SHA-256 is written.
//!
//! Digests cover the file's bytes exactly as stored (an image's container bytes, not its
//! guest bytes). Holes of sparse files are hashed as zeros without reading them
//! ([`cosnap_disk::digest`]); disk images are digested by the copy engine as it writes them.

use std::path::Path;

use crate::Result;

/// The algorithm tag this crate writes.
pub const ALGORITHM: &str = "SHA256";

/// SHA-256 of a file (holes hashed without reading them); `progress(bytes)` as it goes.
pub fn sha256_file(path: &Path, progress: &dyn Fn(u64)) -> Result<String> {
    Ok(cosnap_disk::digest::sha256_file(path, &|n| {
        progress(n);
        Ok(())
    })?)
}

/// [`sha256_file`] of a file already opened (through a directory handle); `path` names
/// it in errors.
pub fn sha256_open(file: &std::fs::File, path: &Path) -> Result<String> {
    Ok(cosnap_disk::digest::sha256_open_file(file, path, &|_| {
        Ok(())
    })?)
}

/// Manifest text for `(relative path, hex digest)` pairs.
pub fn render(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(p, d)| format!("{ALGORITHM}({p})= {d}\n"))
        .collect()
}

/// Parses manifest text into `(algorithm, relative path, hex digest)`; rejects malformed
/// lines, unknown algorithms, absolute or `..` paths, and duplicates.
pub fn parse(text: &str) -> std::result::Result<Vec<(String, String, String)>, String> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| format!("manifest line {}: {why}: {line:?}", n + 1);
        let open = line.find('(').ok_or_else(|| bad("no '('"))?;
        let close = line.rfind(")= ").ok_or_else(|| bad("no ')= '"))?;
        if close < open {
            return Err(bad("malformed"));
        }
        let alg = &line[..open];
        if alg != ALGORITHM {
            return Err(bad("unsupported digest algorithm"));
        }
        let path = &line[open + 1..close];
        let digest = line[close + 3..].trim();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("digest is not 64 hex digits"));
        }
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return Err(bad("path escapes the package"));
        }
        if out.iter().any(|(_, p, _)| p == path) {
            return Err(bad("file listed twice"));
        }
        out.push((
            alg.to_string(),
            path.to_string(),
            digest.to_ascii_lowercase(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_and_rejects() {
        let d = "a".repeat(64);
        let text = render(&[
            ("x.ovf".into(), d.clone()),
            ("vm/Virtual Hard Disks/d (1).qcow2".into(), d.clone()),
        ]);
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed[1].1, "vm/Virtual Hard Disks/d (1).qcow2");
        assert!(parse(&format!("SHA1(x)= {d}")).is_err());
        assert!(parse(&format!("SHA256(../x)= {d}")).is_err());
        assert!(parse(&format!("SHA256(/etc/passwd)= {d}")).is_err());
        assert!(parse("SHA256(x)= 1234").is_err());
        assert!(parse(&format!("SHA256(x)= {d}\nSHA256(x)= {d}")).is_err());
    }
}
