//! Expected guest bytes: what a disk must read after the writes a test made.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// A model of guest bytes kept in a sparse raw file (the expected-bytes oracle).
pub struct RawModel {
    /// The sparse raw file holding the expected bytes.
    pub file: std::fs::File,
}

impl RawModel {
    /// Creates `path` (which must not exist) as a sparse file of `size` zero bytes.
    pub fn new(path: &Path, size: u64) -> RawModel {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        file.set_len(size).unwrap();
        RawModel { file }
    }

    /// Records `len` bytes of `byte` at `off`.
    pub fn write(&self, off: u64, len: u64, byte: u8) {
        let buf = vec![byte; len as usize];
        self.file.write_all_at(&buf, off).unwrap();
    }
}

/// Sparse model of guest bytes in memory: writes recorded as (offset, bytes).
#[derive(Default, Clone)]
pub struct Model {
    /// Virtual size of the disk.
    pub size: u64,
    /// Writes in the order made; later ones win.
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl Model {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> Self {
        Model {
            size,
            writes: Vec::new(),
        }
    }

    /// Records a write of `data` at `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.writes.push((off, data.to_vec()));
    }

    /// The bytes the disk must read at `off..off + len`.
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (o, d) in &self.writes {
            let lo = (*o).max(off);
            let hi = (o + d.len() as u64).min(off + len as u64);
            if lo < hi {
                out[(lo - off) as usize..(hi - off) as usize]
                    .copy_from_slice(&d[(lo - o) as usize..(hi - o) as usize]);
            }
        }
        out
    }

    /// Writes the model as a sparse raw file.
    pub fn to_raw(&self, path: &Path) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(self.size).unwrap();
        for (o, d) in &self.writes {
            f.write_all_at(d, *o).unwrap();
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
