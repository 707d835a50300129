//! Sparse-file primitives: the one home of `SEEK_DATA`/`SEEK_HOLE` walks, `fallocate`
//! and `sync_file_range` in cosnap.
//!
//! Every other module asks this one where a file holds data ([`runs`]), gives space back
//! ([`punch_hole`]) or starts writeback early ([`start_writeback`]), so the system calls,
//! their `unsafe` blocks and their error conventions are written once.
//!
//! `lseek` with `SEEK_DATA`/`SEEK_HOLE` moves the descriptor's file position; cosnap does
//! all its I/O positionally (`pread`/`pwrite`), so that is harmless.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

/// Whether a run of a file holds data or is a hole (reads as zeros, takes no space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Allocated bytes (which may still be zeros).
    Data,
    /// A hole: reads as zeros, no space allocated.
    Hole,
}

/// One run of a [`runs`] walk: a byte range of the file and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// File offsets of the run.
    pub range: Range<u64>,
    /// Data or hole.
    pub kind: RunKind,
}

impl Run {
    /// True for a [`RunKind::Data`] run.
    pub fn is_data(&self) -> bool {
        self.kind == RunKind::Data
    }
}

/// Walks `range` of `file` as alternating data and hole runs, in file order, which
/// together cover the range exactly (empty runs are never yielded).
///
/// A file system that cannot tell (`SEEK_DATA` fails with `EINVAL`) reports the rest as
/// data; past the end of the file (`ENXIO`) everything is a hole. Any other failure is
/// yielded once as an `Err`, after which the walk ends; [`Runs::unknown_as_data`] turns
/// such a failure into "the rest is data" for callers that only use the walk to save work.
pub fn runs(file: &File, range: Range<u64>) -> Runs<'_> {
    Runs {
        file,
        pos: range.start,
        end: range.end,
        pending_data: None,
        failed: false,
    }
}

/// The data runs of `range` as `(start, len)` pairs (see [`runs`] for the conventions).
pub fn data_extents(file: &File, range: Range<u64>) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for run in runs(file, range) {
        let run = run?;
        if run.is_data() {
            out.push((run.range.start, run.range.end - run.range.start));
        }
    }
    Ok(out)
}

/// Iterator of [`runs`].
pub struct Runs<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
    /// The data run that starts after the hole just yielded.
    pending_data: Option<u64>,
    /// A seek failed: the walk yields nothing more.
    failed: bool,
}

impl Runs<'_> {
    /// The walk with any failure read as "the rest of the range is data": never fails,
    /// at worst reads what could have been skipped.
    pub fn unknown_as_data(self) -> impl Iterator<Item = Run> {
        let end = self.end;
        let mut walk = self;
        std::iter::from_fn(move || match walk.next()? {
            Ok(run) => Some(run),
            Err(_) => {
                let start = walk.failed_from();
                (start < end).then_some(Run {
                    range: start..end,
                    kind: RunKind::Data,
                })
            }
        })
    }

    /// Where the walk stood when it failed (its position is not moved on failure).
    fn failed_from(&self) -> u64 {
        self.pos
    }

    fn finish(&mut self) {
        self.pos = self.end;
    }

    /// Ends the walk at `pos` after a failure there: the error is yielded once, and
    /// [`Runs::unknown_as_data`] reads the rest, from `pos`, as data.
    fn fail(&mut self, pos: u64, err: io::Error) -> io::Error {
        self.pos = pos;
        self.failed = true;
        err
    }

    /// The data run starting at `data`, up to the next hole.
    fn data_run(&mut self, data: u64) -> Option<io::Result<Run>> {
        let hole = match seek(self.file, data, libc::SEEK_HOLE) {
            Ok(Some(h)) => h.clamp(data + 1, self.end),
            Ok(None) => self.end,
            Err(e) => return Some(Err(self.fail(data, e))),
        };
        self.pos = hole;
        Some(Ok(Run {
            range: data..hole,
            kind: RunKind::Data,
        }))
    }
}

impl Iterator for Runs<'_> {
    type Item = io::Result<Run>;

    fn next(&mut self) -> Option<io::Result<Run>> {
        if self.failed {
            return None;
        }
        if let Some(data) = self.pending_data.take() {
            return self.data_run(data);
        }
        if self.pos >= self.end {
            return None;
        }

        let pos = self.pos;
        let data = match seek(self.file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d.clamp(pos, self.end),
            Ok(None) => self.end,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.finish();
                return Some(Ok(Run {
                    range: pos..self.end,
                    kind: RunKind::Data,
                }));
            }
            Err(e) => return Some(Err(self.fail(pos, e))),
        };

        if data == pos {
            return self.data_run(data);
        }
        if data < self.end {
            self.pending_data = Some(data);
        }
        self.pos = data;
        Some(Ok(Run {
            range: pos..data,
            kind: RunKind::Hole,
        }))
    }
}

/// `lseek(fd, offset, whence)`; `Ok(None)` on `ENXIO` (no data / no hole after `offset`
/// before the end of the file).
fn seek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
    // SAFETY: lseek on a valid descriptor owned by `file`; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// What an `fallocate` call does to the file's size when the range reaches past its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizePolicy {
    /// The file's size does not change (`FALLOC_FL_KEEP_SIZE`).
    Keep,
    /// The file grows to cover the range.
    Extend,
}

/// Deallocates `[offset, offset + len)`: the range reads as zeros and takes no space. The
/// file's size never changes. Fails (e.g. `EOPNOTSUPP`) where the file system cannot;
/// callers then write zeros themselves.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Makes `[offset, offset + len)` read as zeros, keeping (or allocating) its space
/// (`FALLOC_FL_ZERO_RANGE`): cheaper than writing zeros where the file system supports it.
pub fn zero_range(file: &File, offset: u64, len: u64, size: SizePolicy) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_ZERO_RANGE | keep(size), offset, len)
}

/// Allocates space for `[offset, offset + len)` without changing its contents (plain
/// `fallocate`), so later writes there cannot fail for lack of space.
pub fn preallocate(file: &File, offset: u64, len: u64, size: SizePolicy) -> io::Result<()> {
    fallocate(file, keep(size), offset, len)
}

fn keep(size: SizePolicy) -> libc::c_int {
    match size {
        SizePolicy::Keep => libc::FALLOC_FL_KEEP_SIZE,
        SizePolicy::Extend => 0,
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "range past off_t");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_big())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_big())?;
    // SAFETY: fallocate on a valid descriptor owned by `file`; no memory is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts asynchronous writeback of the whole file's dirty pages
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk writes while the caller goes on,
/// and a later fsync has little left to do. Durability still needs that fsync.
pub fn start_writeback(file: &File) -> io::Result<()> {
    // SAFETY: valid descriptor; offset 0 and length 0 mean "to the end of the file".
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    /// A 16 MiB file with data at [0, 64 KiB), [5 MiB, 5 MiB + 4 KiB) and
    /// [12 MiB, 13 MiB); the rest never written.
    fn sparse_file(dir: &std::path::Path) -> (File, Vec<Range<u64>>) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("sparse"))
            .unwrap();
        let written = vec![0..64 << 10, 5 * MIB..5 * MIB + 4096, 12 * MIB..13 * MIB];
        for r in &written {
            file.write_all_at(&vec![0xA5; (r.end - r.start) as usize], r.start)
                .unwrap();
        }
        file.set_len(16 * MIB).unwrap();
        (file, written)
    }

    fn holes_supported(file: &File) -> bool {
        // ext4, xfs, btrfs, tmpfs report holes; others report all data.
        runs(file, 0..file.metadata().unwrap().len())
            .any(|r| r.is_ok_and(|r| r.kind == RunKind::Hole))
    }

    #[test]
    fn runs_cover_the_range_and_data_holds_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let (file, written) = sparse_file(dir.path());
        for range in [
            0..16 * MIB,
            3 * MIB..12 * MIB + 5,
            5 * MIB + 100..5 * MIB + 200,
        ] {
            let walk: Vec<Run> = runs(&file, range.clone()).map(|r| r.unwrap()).collect();

            let mut pos = range.start;
            for run in &walk {
                assert_eq!(run.range.start, pos, "runs are contiguous: {walk:?}");
                assert!(run.range.end > run.range.start, "no empty runs: {walk:?}");
                pos = run.range.end;
            }
            assert_eq!(pos, range.end, "runs cover the range: {walk:?}");

            for w in &written {
                let (a, b) = (w.start.max(range.start), w.end.min(range.end));
                let covered = walk
                    .iter()
                    .filter(|r| r.is_data())
                    .any(|r| r.range.start <= a && b <= r.range.end);
                assert!(a >= b || covered, "{w:?} is inside a data run: {walk:?}");
            }

            for hole in walk.iter().filter(|r| !r.is_data()) {
                let mut buf = vec![1u8; (hole.range.end - hole.range.start) as usize];
                file.read_exact_at(&mut buf, hole.range.start).unwrap();
                assert!(buf.iter().all(|&b| b == 0), "holes read as zeros");
            }
        }
        if holes_supported(&file) {
            let data = data_extents(&file, 0..16 * MIB).unwrap();
            let total: u64 = data.iter().map(|(_, n)| n).sum();
            assert!(total < 4 * MIB, "holes are not reported as data: {data:?}");
        }
    }

    #[test]
    fn past_the_end_is_a_hole_and_empty_range_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sparse_file(dir.path());
        let walk: Vec<Run> = runs(&file, 20 * MIB..21 * MIB)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            walk,
            vec![Run {
                range: 20 * MIB..21 * MIB,
                kind: RunKind::Hole
            }]
        );
        assert_eq!(runs(&file, 7..7).count(), 0);
    }

    #[test]
    fn unknown_as_data_reads_a_failure_as_data() {
        // A pipe cannot seek: SEEK_DATA fails with ESPIPE.
        let (reader, _writer) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(reader));
        assert!(runs(&file, 0..100).next().unwrap().is_err());
        let lenient: Vec<Run> = runs(&file, 0..100).unknown_as_data().collect();
        assert_eq!(
            lenient,
            vec![Run {
                range: 0..100,
                kind: RunKind::Data
            }]
        );
    }

    #[test]
    fn punch_hole_zeroes_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sparse_file(dir.path());
        punch_hole(&file, 12 * MIB, MIB).unwrap();
        let mut buf = vec![1u8; MIB as usize];
        file.read_exact_at(&mut buf, 12 * MIB).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(file.metadata().unwrap().len(), 16 * MIB, "size kept");
        if holes_supported(&file) {
            let data = data_extents(&file, 12 * MIB..13 * MIB).unwrap();
            assert!(data.is_empty(), "punched range is a hole: {data:?}");
        }
    }

    #[test]
    fn zero_range_and_preallocate_follow_the_size_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sparse_file(dir.path());
        zero_range(&file, 0, 4096, SizePolicy::Keep).unwrap();
        let mut buf = vec![1u8; 4096];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));

        preallocate(&file, 16 * MIB, MIB, SizePolicy::Keep).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 16 * MIB);
        preallocate(&file, 16 * MIB, MIB, SizePolicy::Extend).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 17 * MIB);
        zero_range(&file, 17 * MIB, 4096, SizePolicy::Extend).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 17 * MIB + 4096);
    }

    #[test]
    fn writeback_accepts_a_written_file_and_refuses_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sparse_file(dir.path());
        start_writeback(&file).unwrap();
        file.sync_all().unwrap();

        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        assert!(start_writeback(&pipe).is_err(), "ESPIPE is reported");
    }
}
