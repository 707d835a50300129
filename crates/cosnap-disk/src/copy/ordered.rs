//! The digesting copy: writes an output's host-to-host copies in file order and hashes the
//! whole output file on the way, so an export reads each byte once and never reads its
//! outputs back to digest them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::{BUF, Direct, Run, wrote};
use crate::digest::{DigestAlgorithm, FileHasher, hash_range};
use crate::error::{DiskError, Result};
use crate::image::Image;
use crate::sparse;

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
/// pass through user space once — read from the source ahead of use by a reader thread
/// ([`start_reader`]), hashed by this thread, written by [`OutputWriter`] — instead of an
/// in-kernel copy followed by a second read of every output (measured: 3 × 1 GiB of qcow2
/// data, 6.5 s instead of 7.9 s).
///
/// Which path the bytes take is [`IoPath`](super::IoPath)'s choice, per output: a large
/// output goes around the page cache (`O_DIRECT` reads into an aligned buffer, hashed,
/// written by DMA from it on a writer thread, the file's space allocated first), a small
/// one through it (the kernel absorbs its writes at memory speed). Measured on 3 × 4 GiB
/// qcow2 disks with 25 % data and one core busy: `O_DIRECT` 2.7 s of CPU where the page
/// cache took 7–14 s (docs/decisions.md, "Export copy: O_DIRECT for large outputs"). The
/// final `fsync` makes the output durable either way. What lies between the copies
/// (metadata, ranges written while planning, holes) is read back from the file, holes
/// skipped. Progress: each copied byte counts twice (copy + hash), read-back bytes up to
/// the job's remaining share.
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
    let direct_io = run.io_path.is_direct(copied);
    if direct_io {
        preallocate_copies(&file, directs);
    }

    let mut hasher = algorithm.hasher();
    let mut scratch = vec![0u8; 1 << 20];
    let directs: &[Direct<'_>] = directs;
    std::thread::scope(|s| {
        let (pieces, buffers) = start_reader(s, directs, direct_io);
        let mut out = OutputWriter::new(s, &file, path, direct_io, buffers);
        let mut pos = 0u64;
        for d in directs {
            hash_range(
                &file,
                path,
                pos..d.dst_off,
                &mut hasher,
                &mut scratch,
                &advance,
            )?;
            copy_one(d, &pieces, &mut out, &mut hasher, run)?;
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
        out.finish()
    })?;
    readback.finish();

    run.check()?;
    file.sync_all().map_err(|e| DiskError::io(path, e))?;
    Ok(hasher.finish_hex())
}

/// Allocates the ranges the copies will fill (merged where adjacent) before the first
/// `O_DIRECT` write: each write then fills space the file already has instead of growing
/// the file, which ext4 does one write at a time with a journal update each. Best effort:
/// where it fails, the writes allocate as they go.
fn preallocate_copies(file: &File, directs: &[Direct<'_>]) {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for d in directs {
        match runs.last_mut() {
            Some((_, end)) if *end == d.dst_off => *end += d.len,
            _ => runs.push((d.dst_off, d.dst_off + d.len)),
        }
    }
    for (start, end) in runs {
        let _ = sparse::preallocate(file, start, end - start, sparse::SizePolicy::Extend);
    }
}

/// Writes the copied pieces of a [`copy_in_file_order`] into its output, after hashing
/// them, and hands each buffer back to the reader.
///
/// With `O_DIRECT` the pieces go to a writer thread that writes them through a second
/// descriptor, straight from the buffer by DMA (no copy into the page cache, no writeback
/// work later), while this thread hashes the next piece and the reader reads the one after:
/// read, hash and write of three pieces overlap, and each output keeps a request in flight
/// on both sides. Through the page cache (the fallback: unaligned pieces, a file system that
/// refuses `O_DIRECT`) this thread hashes and writes [`SLICE`] by [`SLICE`], so each slice
/// is still in the core's cache when the write copies it.
struct OutputWriter<'s, 'f> {
    file: &'f File,
    path: &'f Path,
    direct: Option<DirectWriter<'s>>,
    buffers: SyncSender<AlignedBuf>,
}

/// The `O_DIRECT` writer thread of an [`OutputWriter`] and the channel that feeds it.
struct DirectWriter<'s> {
    pieces: SyncSender<Piece>,
    thread: std::thread::ScopedJoinHandle<'s, Result<()>>,
}

impl<'s, 'f: 's> OutputWriter<'s, 'f> {
    fn new(
        scope: &'s std::thread::Scope<'s, '_>,
        file: &'f File,
        path: &'f Path,
        direct: bool,
        buffers: SyncSender<AlignedBuf>,
    ) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let direct_file = direct
            .then(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten();
        let direct = direct_file.map(|direct_file| {
            let (pieces, queued) = sync_channel(1);
            let returned = buffers.clone();
            let thread =
                scope.spawn(move || write_direct(&direct_file, file, path, &queued, &returned));
            DirectWriter { pieces, thread }
        });
        Self {
            file,
            path,
            direct,
            buffers,
        }
    }
}

impl OutputWriter<'_, '_> {
    /// Hashes `piece` and writes it (on the writer thread with `O_DIRECT`).
    fn write_hashed(&mut self, piece: Piece, hasher: &mut FileHasher) -> Result<()> {
        let Some(direct) = &self.direct else {
            self.write_buffered(&piece, hasher)?;
            let _ = self.buffers.send(piece.buf);
            return Ok(());
        };

        hasher.update(piece.bytes());
        if direct.pieces.send(piece).is_err() {
            // The writer stopped on an error: `finish` returns it.
            return self.finish().and(Err(DiskError::Cancelled));
        }
        Ok(())
    }

    fn write_buffered(&self, piece: &Piece, hasher: &mut FileHasher) -> Result<()> {
        let mut at = piece.at;
        for slice in piece.bytes().chunks(SLICE) {
            hasher.update(slice);
            self.file
                .write_all_at(slice, at)
                .map_err(|e| DiskError::io(self.path, e))?;
            wrote(self.file, slice.len() as u64);
            at += slice.len() as u64;
        }
        Ok(())
    }

    /// Waits for the writer thread's last write; its error, if it had one.
    fn finish(&mut self) -> Result<()> {
        let Some(DirectWriter { pieces, thread }) = self.direct.take() else {
            return Ok(());
        };
        drop(pieces);
        thread.join().unwrap_or(Err(DiskError::Cancelled))
    }
}

/// The writer thread's loop (see [`OutputWriter`]): writes each queued piece through
/// `direct` where it is aligned, through `file` (the page cache) otherwise or once the file
/// system refused `O_DIRECT`, and returns its buffer to the reader.
fn write_direct(
    direct: &File,
    file: &File,
    path: &Path,
    queued: &Receiver<Piece>,
    returned: &SyncSender<AlignedBuf>,
) -> Result<()> {
    let mut refused = false;
    for piece in queued {
        let bytes = piece.bytes();
        let aligned = piece.at.is_multiple_of(DIRECT_ALIGN as u64)
            && bytes.len().is_multiple_of(DIRECT_ALIGN);
        let written = match (!refused && aligned).then(|| direct.write_all_at(bytes, piece.at)) {
            // Alignment this file system does not take: the page cache from now on.
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                refused = true;
                None
            }
            other => other,
        };
        let written = written.unwrap_or_else(|| {
            file.write_all_at(bytes, piece.at)
                .inspect(|()| wrote(file, bytes.len() as u64))
        });
        written.map_err(|e| DiskError::io(path, e))?;
        let _ = returned.send(piece.buf);
    }
    Ok(())
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

/// A piece of a copy read by the reader thread: its buffer, and where its `len` bytes go
/// in the output.
struct Piece {
    buf: AlignedBuf,
    at: u64,
    len: usize,
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        &self.buf.storage[self.buf.start..self.buf.start + self.len]
    }
}

/// Pieces in file order from the reader thread (an error ends them).
type Pieces = Receiver<Result<Piece>>;

/// Starts the thread that reads the sources of `directs`, [`BUF`] bytes at a time, into
/// two buffers that travel between it and the writer: while one piece is hashed and
/// written, the next one is being read, so a cold source and the output both have I/O in
/// flight. It stops when the writer drops either channel (done, failed or cancelled).
fn start_reader<'s, 'd: 's>(
    scope: &'s std::thread::Scope<'s, '_>,
    directs: &'d [Direct<'d>],
    direct_io: bool,
) -> (Pieces, SyncSender<AlignedBuf>) {
    // Direct: one piece being read, one queued, one being hashed, one being written.
    let count = if direct_io { 4 } else { 2 };
    let (piece_tx, pieces) = sync_channel(1);
    let (buffers, free) = sync_channel(count);
    for _ in 0..count {
        let _ = buffers.send(AlignedBuf::new());
    }
    scope.spawn(move || read_pieces(directs, DirectSources::new(direct_io), &free, &piece_tx));
    (pieces, buffers)
}

/// The reader thread's loop (see [`start_reader`]).
fn read_pieces(
    directs: &[Direct<'_>],
    mut sources: DirectSources,
    free: &Receiver<AlignedBuf>,
    pieces: &SyncSender<Result<Piece>>,
) {
    for d in directs {
        let mut done = 0u64;
        while done < d.len {
            let Ok(mut buf) = free.recv() else { return };
            let len = (d.len - done).min(BUF as u64) as usize;
            let read = sources.read(d.layer, d.src_off + done, &mut buf.bytes_mut()[..len]);
            let failed = read.is_err();
            let piece = read.map(|()| Piece {
                buf,
                at: d.dst_off + done,
                len,
            });
            if pieces.send(piece).is_err() || failed {
                return;
            }
            done += len as u64;
        }
    }
}

/// Copies `d`: takes its pieces from the reader thread, hashes and writes each (the
/// writer hands the buffer back for the next read).
fn copy_one(
    d: &Direct<'_>,
    pieces: &Pieces,
    out: &mut OutputWriter<'_, '_>,
    hasher: &mut FileHasher,
    run: &Run<'_>,
) -> Result<()> {
    let mut done = 0u64;
    while done < d.len {
        run.check()?;
        // The reader only stops early after sending its error.
        let piece = pieces.recv().map_err(|_| DiskError::Cancelled)??;
        let len = piece.len as u64;

        out.write_hashed(piece, hasher)?;

        // Copied and hashed: twice its share of the progress.
        run.advance(2 * len);
        done += len;
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
