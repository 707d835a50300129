//! The package manifest: one line per file, `SHA256(relative/path)= hex`, OVF style.
//! The algorithm is named on every line: SHA-256 by default, `BLAKE3` when the exporter
//! chose it (a cosnap option outside OVF; see docs/decisions.md).
//!
//! Digests cover the file's bytes exactly as stored (an image's container bytes, not its
//! guest bytes). Holes of sparse files are hashed as zeros without reading them
//! ([`cosnap_disk::digest`]); disk images are digested by the copy engine as it writes them.

use std::path::Path;

use cosnap_disk::digest::DigestAlgorithm;

use crate::Result;

/// The algorithm tag this crate writes by default.
pub const ALGORITHM: &str = "SHA256";

/// Digest of a file with `algorithm` (holes hashed without reading them); `progress(bytes)`
/// as it goes.
pub fn digest_file(
    path: &Path,
    algorithm: DigestAlgorithm,
    progress: &dyn Fn(u64),
) -> Result<String> {
    Ok(cosnap_disk::digest::digest_file(path, algorithm, &|n| {
        progress(n);
        Ok(())
    })?)
}

/// [`digest_file`] of a file already opened (through a directory handle); `path` names
/// it in errors.
pub fn digest_open(
    file: &std::fs::File,
    path: &Path,
    algorithm: DigestAlgorithm,
) -> Result<String> {
    Ok(cosnap_disk::digest::digest_open_file(
        file,
        path,
        algorithm,
        &|_| Ok(()),
    )?)
}

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

/// Manifest text for `(relative path, hex digest)` pairs, SHA-256.
pub fn render(entries: &[(String, String)]) -> String {
    render_with(entries, DigestAlgorithm::Sha256)
}

/// Manifest text for `(relative path, hex digest)` pairs made with `algorithm`.
pub fn render_with(entries: &[(String, String)], algorithm: DigestAlgorithm) -> String {
    let tag = algorithm.tag();
    entries
        .iter()
        .map(|(p, d)| format!("{tag}({p})= {d}\n"))
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
        if DigestAlgorithm::from_tag(alg).is_none() {
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
        let blake = render_with(&[("x".into(), d.clone())], DigestAlgorithm::Blake3);
        assert_eq!(blake, format!("BLAKE3(x)= {d}\n"));
        assert_eq!(parse(&blake).unwrap()[0].0, "BLAKE3");
        assert!(parse(&format!("SHA256(../x)= {d}")).is_err());
        assert!(parse(&format!("SHA256(/etc/passwd)= {d}")).is_err());
        assert!(parse("SHA256(x)= 1234").is_err());
        assert!(parse(&format!("SHA256(x)= {d}\nSHA256(x)= {d}")).is_err());
    }
}
