//! The digesting copy: writes an output's host-to-host copies in file order and hashes the
//! whole output file on the way, so an export reads each byte once and never reads its
//! outputs back to digest them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{BUF, Direct, Run, wrote};
use crate::digest::{DigestAlgorithm, FileHasher, hash_range};
use crate::error::{DiskError, Result};
use crate::image::Image;

/// Alignment `O_DIRECT` reads need (buffer, offset and length).
const DIRECT_ALIGN: usize = 4096;

/// Bytes hashed and then written in one go: small enough to stay in the core's L2 cache
/// between the hash and the write's copy into the page cache.
const SLICE: usize = 256 << 10;

/// A [`BUF`]-byte buffer aligned for `O_DIRECT`, carved out of a `Vec`.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let storage = vec![0u8; BUF + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        Self { storage, start }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + BUF]
    }
}

/// Writes the host-to-host copies of a closed output in ascending file order and returns
/// the digest (`algorithm`, lower-case hex) of the whole output file.
///
/// Why not `copy_file_range` here: a digest needs the bytes in file order anyway, so they
/// pass through user space once — read from the source (with `O_DIRECT` where aligned:
/// [`DirectSources`]), then hashed and written [`SLICE`] by [`SLICE`] by this thread —
/// instead of an in-kernel copy followed by a second read of every output (measured: 3 ×
/// 1 GiB of qcow2 data, 6.5 s instead of 7.9 s; the direct reads halve the system CPU and
/// leave the host's page cache to its VMs). Hashing a slice and writing it right away
/// keeps it in the cache for the write's copy: against a separate writer thread fed 4 MiB
/// buffers, an export of 3 disks took 0.62× the CPU and 0.71× the wall time, paired
/// medians of 7. Writes are buffered (the kernel's writeback, kicked every few MiB,
/// overlaps them with the next reads); `O_DIRECT` writes were tried and were slower on
/// this kind of virtual disk at the buffer sizes bounded memory allows. What lies between
/// the copies (metadata, ranges written while planning, holes) is read back from the
/// file, holes skipped. Progress: each copied byte counts twice (copy + hash), read-back
/// bytes up to the job's remaining share.
pub(super) fn copy_in_file_order(
    directs: &mut [Direct<'_>],
    path: &Path,
    work: u64,
    run: &Run<'_>,
    algorithm: DigestAlgorithm,
) -> Result<String> {
    directs.sort_by_key(|d| d.dst_off);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    let size = file.metadata().map_err(|e| DiskError::io(path, e))?.len();
    let copied: u64 = directs.iter().map(|d| d.len).sum();
    let readback = ReadBack {
        run,
        budget: AtomicU64::new(work.saturating_sub(copied)),
    };
    let advance = |n| readback.advance(n);
    let out = Output { file: &file, path };

    let mut hasher = algorithm.hasher();
    let mut scratch = vec![0u8; 1 << 20];
    let mut buf = AlignedBuf::new();
    let mut sources = DirectSources::new(!run.force_rw);
    let mut pos = 0u64;
    for d in directs.iter() {
        hash_range(
            &file,
            path,
            pos..d.dst_off,
            &mut hasher,
            &mut scratch,
            &advance,
        )?;
        copy_one(d, &mut sources, &mut buf, out, &mut hasher, run)?;
        pos = d.dst_off + d.len;
    }
    hash_range(
        &file,
        path,
        pos.min(size)..size,
        &mut hasher,
        &mut scratch,
        &advance,
    )?;
    readback.finish();

    run.check()?;
    file.sync_all().map_err(|e| DiskError::io(path, e))?;
    Ok(hasher.finish_hex())
}

/// The output file of a [`copy_in_file_order`] and its name for errors.
#[derive(Clone, Copy)]
struct Output<'f> {
    file: &'f File,
    path: &'f Path,
}

/// Progress of the bytes read back from the output (everything that is not a copy): they
/// advance the job up to its remaining share, `budget`, and no further.
struct ReadBack<'r, 'p> {
    run: &'r Run<'p>,
    budget: AtomicU64,
}

impl ReadBack<'_, '_> {
    fn advance(&self, n: u64) -> Result<()> {
        self.run.check()?;
        let take = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some(l.saturating_sub(n))
            })
            .map_or(0, |l| l.min(n));
        if take > 0 {
            self.run.advance(take);
        }
        Ok(())
    }

    /// What the read-back did not use up (zero ranges of the walk take no file space).
    fn finish(&self) {
        self.run.advance(self.budget.swap(0, Ordering::Relaxed));
    }
}

/// Copies `d`: reads it from its source in [`BUF`] pieces, then hashes and writes each
/// piece [`SLICE`] by [`SLICE`].
fn copy_one(
    d: &Direct<'_>,
    sources: &mut DirectSources,
    buf: &mut AlignedBuf,
    out: Output<'_>,
    hasher: &mut FileHasher,
    run: &Run<'_>,
) -> Result<()> {
    let mut done = 0u64;
    while done < d.len {
        run.check()?;
        let n = (d.len - done).min(BUF as u64) as usize;
        let piece = &mut buf.bytes_mut()[..n];
        sources.read(d.layer, d.src_off + done, piece)?;

        let mut at = d.dst_off + done;
        for slice in piece.chunks(SLICE) {
            hasher.update(slice);
            out.file
                .write_all_at(slice, at)
                .map_err(|e| DiskError::io(out.path, e))?;
            wrote(out.file, slice.len() as u64);
            at += slice.len() as u64;
        }

        // Copied and hashed: twice its share of the progress.
        run.advance(2 * n as u64);
        done += n as u64;
    }
    Ok(())
}

/// Source layer files opened again with `O_DIRECT` for the copy pass: their bytes go by DMA
/// straight into the (aligned) buffer that is hashed and written, instead of being copied
/// out of the page cache. Unaligned pieces, and file systems that refuse `O_DIRECT`, are
/// read through the layer's own (buffered) file.
struct DirectSources {
    enabled: bool,
    files: std::collections::HashMap<PathBuf, Option<File>>,
}

impl DirectSources {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            files: Default::default(),
        }
    }

    /// Fills `piece` from `layer`'s file at `off`; bytes past its end read as zeros (a data
    /// cluster past EOF).
    fn read(&mut self, layer: &dyn Image, off: u64, piece: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let aligned = off.is_multiple_of(DIRECT_ALIGN as u64)
            && piece.len().is_multiple_of(DIRECT_ALIGN)
            && (piece.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        if self.enabled && aligned {
            let direct = self
                .files
                .entry(layer.path().to_path_buf())
                .or_insert_with(|| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(layer.path())
                        .ok()
                });
            if let Some(f) = direct {
                match read_full(f, off, piece) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.enabled = false;
                    }
                    Err(e) => return Err(DiskError::io(layer.path(), e)),
                }
            }
        }
        read_full(layer.file(), off, piece).map_err(|e| DiskError::io(layer.path(), e))
    }
}

/// Reads `piece.len()` bytes at `off`, zeros past the end of the file.
pub(super) fn read_full(file: &File, off: u64, piece: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < piece.len() {
        match file.read_at(&mut piece[got..], off + got as u64) {
            Ok(0) => {
                piece[got..].fill(0);
                break;
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
