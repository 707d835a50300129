//! The package manifest: one line per file, `SHA256(relative/path)= hex`, OVF style
//! (DSP0243 §5.1). The algorithm is named on every line; only SHA-256 is written.
//!
//! Digests cover the file's bytes exactly as stored (an image's container bytes, not its
//! guest bytes). Holes of sparse files are hashed as zeros without reading them.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{ExportError, Result};

/// The algorithm tag this crate writes.
pub const ALGORITHM: &str = "SHA256";

const BUF: usize = 1 << 20;
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// SHA-256 of a file, skipping the reads of its holes (SEEK_DATA/SEEK_HOLE). Calls
/// `progress(bytes)` as it goes.
pub fn sha256_file(path: &Path, progress: &dyn Fn(u64)) -> Result<String> {
    let mut file = File::open(path).map_err(|e| ExportError::io(path, e))?;
    let size = file.metadata().map_err(|e| ExportError::io(path, e))?.len();
    let fd = file.as_raw_fd();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on an fd we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let data_start = if data < 0 {
            size
        } else {
            (data as u64).min(size)
        };
        // Hole [pos, data_start): zeros.
        let mut hole = data_start - pos;
        while hole > 0 {
            let n = hole.min(ZEROS.len() as u64) as usize;
            hasher.update(&ZEROS[..n]);
            hole -= n as u64;
        }
        progress(data_start - pos);
        pos = data_start;
        if pos >= size {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_HOLE) };
        let data_end = if h < 0 { size } else { (h as u64).min(size) };
        // SAFETY: as above; positions the file for the reads below.
        if unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_SET) } < 0 {
            return Err(ExportError::io(path, std::io::Error::last_os_error()));
        }
        let mut left = data_end - pos;
        while left > 0 {
            let want = left.min(BUF as u64) as usize;
            let n = file
                .read(&mut buf[..want])
                .map_err(|e| ExportError::io(path, e))?;
            if n == 0 {
                return Err(ExportError::io(
                    path,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
            progress(n as u64);
        }
        pos = data_end;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_hash_equals_dense_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let mut f = File::create(&p).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(b"hello").unwrap();
        f.set_len(9 << 20).unwrap();
        drop(f);
        let mut all = Vec::new();
        File::open(&p).unwrap().read_to_end(&mut all).unwrap();
        let dense = hex(&Sha256::digest(&all));
        let counted = std::sync::atomic::AtomicU64::new(0);
        let sparse = sha256_file(&p, &|n| {
            counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(sparse, dense);
        assert_eq!(counted.into_inner(), 9 << 20);
    }

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
