//! The copy engine: flatten chains into new sparse images, several at once.
//!
//! Plan first (walk the allocation maps; holes are never read), then copy each extent:
//! `copy_file_range` from the layer file holding the bytes straight into the destination
//! file where the source extent is contiguous on the host and the destination offers a
//! direct target (raw, or [`Image::direct_write_target`]); pread/pwrite otherwise, or when
//! the kernel refuses (EXDEV, EOPNOTSUPP, EINVAL, ENOSYS). Memory is bounded: one fixed
//! buffer per worker, no whole-disk buffers.
//!
//! Decisions:
//! - With `base` and no `dest_parent`, the output is a standalone image holding only the
//!   changed ranges (everything else reads as zeros): the "delta" file of an export.
//!   Zero ranges are then left as holes. With `dest_parent`, zero ranges (and, without
//!   `base`, every range no layer holds) are written as explicit zeros so that they hide
//!   the parent.
//! - A failure or a cancellation of any job stops all jobs and removes every destination
//!   this call created (never one that existed before: creation is exclusive).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::chain::{LayerSpec, open_chain};
use crate::digest::DigestAlgorithm;

mod ordered;
use crate::error::{DiskError, Result};
use crate::extents::{chain_map, changed_ranges_open, layers, merge_ranges};
use crate::image::{ExtentState, Format, Image};
use crate::paths::relative_path;
use crate::probe;
use crate::progress::{CancelToken, Progress};
use crate::qcow2::{self, Qcow2Image};
use crate::raw::{self, RawImage};
use crate::sparse;
use crate::vhdx;
use ordered::{copy_in_file_order, read_full};

/// Buffer per worker for read/write copies.
const BUF: usize = 4 << 20;
/// Bytes written to one output between two writeback kicks.
const KICK: u64 = 32 << 20;
/// Largest single copy_file_range call (keeps kicks and progress regular).
const CFR_CALL: usize = 16 << 20;

thread_local! {
    static UNKICKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Notes `n` bytes written to `file`; every [`KICK`] bytes starts writeback of the whole
/// file (`sync_file_range(WRITE)`, asynchronous), so the disk writes while the copy goes
/// on and the final fsync has little left to do.
fn wrote(file: &File, n: u64) {
    UNKICKED.with(|c| {
        let v = c.get() + n;
        if v >= KICK {
            // Best effort: a failed kick only leaves more for the final fsync.
            let _ = sparse::start_writeback(file);
            c.set(0);
        } else {
            c.set(v);
        }
    });
}

/// Source allocation units from this size up are scanned for zeros instead of copied.
const LARGE_UNIT: u64 = 1 << 20;
/// Largest piece handed to one `copy_file_range` loop between progress/cancel checks.
const DIRECT_PIECE: u64 = 64 << 20;

/// One flatten: read the chain from `source` and write a new image at `dest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlattenJob {
    /// Top layer of the chain to read.
    pub source: PathBuf,
    /// Only the ranges that changed above this ancestor are written (see
    /// [`crate::ops::changed_ranges`]); `None` = every allocated range of the whole chain.
    pub base: Option<PathBuf>,
    /// The image to create (it must not exist).
    pub dest: PathBuf,
    /// Its format.
    pub dest_format: Format,
    /// Makes `dest` a differencing image of this parent (VHDX child for a VHDX parent,
    /// qcow2 overlay otherwise), named by a path relative to `dest`'s directory. Ranges not
    /// written are inherited from it.
    pub dest_parent: Option<PathBuf>,
    /// The source chain as the caller recorded it (top first, `source` on top): opened
    /// with these formats and parents, nothing probed (see [`crate::chain`](mod@crate::chain)). Empty = probe
    /// `source` and follow the parents it names — only for images a person named.
    pub source_layers: Vec<LayerSpec>,
    /// The recorded format of `dest_parent`; `None` = probe it (a person named it).
    pub dest_parent_format: Option<Format>,
    /// The guest byte ranges that changed, as a change tracker (a persistent dirty bitmap)
    /// reported them: only these are written, instead of the ranges found by comparing the
    /// chain above `base`. Unheld parts inside them are written as zeros.
    #[serde(default)]
    pub changed: Option<Vec<Range<u64>>>,
}

impl FlattenJob {
    /// The whole chain of `source` (its parents as its files name them) into the new
    /// standalone image `dest`: no base, no parent, no recorded chain, no change list.
    pub fn whole(source: PathBuf, dest: PathBuf, dest_format: Format) -> FlattenJob {
        FlattenJob {
            source,
            base: None,
            dest,
            dest_format,
            dest_parent: None,
            source_layers: Vec::new(),
            dest_parent_format: None,
            changed: None,
        }
    }

    fn open_source(&self) -> Result<Box<dyn Image>> {
        if self.source_layers.is_empty() {
            return probe::open(&self.source, false);
        }
        if self.source_layers[0].path != self.source {
            return Err(DiskError::invalid(
                &self.source,
                "the recorded chain does not start at the source",
            ));
        }
        open_chain(&self.source_layers, false)
    }

    fn dest_parent_format(&self, parent: &Path) -> Result<Format> {
        match self.dest_parent_format {
            Some(f) => Ok(f),
            None => probe::detect_format(parent),
        }
    }
}

/// What a flatten wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlattenReport {
    /// The image written.
    pub dest: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its virtual size (the source's, rounded up to 512 bytes for qcow2).
    pub virtual_size: u64,
    /// Guest bytes written as data.
    pub data_bytes: u64,
    /// The ranges written (data or zero), merged and sorted.
    pub ranges: Vec<Range<u64>>,
    /// SHA-256 (lower-case hex) of the output file's bytes, from [`flatten_all_digested`].
    #[serde(default)]
    pub sha256: Option<String>,
    /// The output file's digest, from [`flatten_all_digested_with`] (any algorithm).
    #[serde(default)]
    pub digest: Option<FileDigest>,
}

/// A file's digest and the algorithm that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// The algorithm.
    pub algorithm: DigestAlgorithm,
    /// Lower-case hex.
    pub hex: String,
}

#[derive(Debug, Clone, Copy)]
enum SegKind {
    /// Data held by the layer at `depth`, contiguous at `host` in its file when known.
    Data {
        depth: usize,
        host: Option<u64>,
    },
    Zero,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    offset: u64,
    len: u64,
    kind: SegKind,
}

struct Plan {
    source: Box<dyn Image>,
    segs: Vec<Seg>,
    /// Ranges reported as written (data and zero), merged.
    ranges: Vec<Range<u64>>,
    /// Bytes this job contributes to progress.
    work: u64,
}

fn plan(job: &FlattenJob) -> Result<Plan> {
    let source = job.open_source()?;
    let size = source.virtual_size();
    let with_parent = job.dest_parent.is_some();
    let scope: Vec<Range<u64>> = match (&job.changed, &job.base) {
        (Some(changed), _) => changed
            .iter()
            .map(|r| r.start.min(size)..r.end.min(size))
            .filter(|r| !r.is_empty())
            .collect(),
        (None, None) => std::iter::once(0..size).collect(),
        (None, Some(base)) => {
            let want = qcow2::canonical(base);
            let depth = layers(source.as_ref())
                .iter()
                .position(|l| qcow2::canonical(l.path()) == want)
                .ok_or_else(|| {
                    DiskError::invalid(
                        &job.source,
                        format!("{} is not in this image's chain", base.display()),
                    )
                })?;
            changed_ranges_open(source.as_ref(), depth)?
        }
    };
    let mut segs = Vec::new();
    let mut ranges = Vec::new();
    for r in &scope {
        for e in chain_map(source.as_ref(), r.start, r.end - r.start)? {
            let kind = match e.state {
                ExtentState::Data { host_offset } => SegKind::Data {
                    depth: e.depth,
                    host: host_offset,
                },
                ExtentState::Zero => SegKind::Zero,
                // Unheld inside a changed range (a layer shorter than the top) or, without a
                // base, unheld anywhere: zeros.
                ExtentState::Inherited
                    if job.base.is_some() || job.changed.is_some() || with_parent =>
                {
                    SegKind::Zero
                }
                ExtentState::Inherited => continue,
            };
            ranges.push(e.offset..e.offset + e.len);
            if matches!(kind, SegKind::Zero) && !with_parent {
                continue;
            }
            segs.push(Seg {
                offset: e.offset,
                len: e.len,
                kind,
            });
        }
    }
    let work = segs.iter().map(|s| s.len).sum();
    Ok(Plan {
        source,
        segs,
        ranges: merge_ranges(ranges),
        work,
    })
}

/// Creates the destination of `job` (exclusively) with the source's virtual size.
fn create_dest(job: &FlattenJob, source: &dyn Image) -> Result<()> {
    let size = source.virtual_size();
    let dest = &job.dest;
    match (job.dest_format, &job.dest_parent) {
        (Format::Raw, None) => raw::create(dest, size),
        (Format::Raw, Some(_)) => Err(DiskError::invalid(dest, "a raw image cannot have a parent")),
        (Format::Qcow2, parent) => {
            let backing = match parent {
                None => None,
                Some(p) => {
                    let fmt = job.dest_parent_format(p)?;
                    let dir = dest
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    let name = relative_path(dir, p)
                        .to_str()
                        .ok_or_else(|| DiskError::invalid(p, "path is not UTF-8"))?
                        .to_string();
                    Some((name, fmt))
                }
            };
            qcow2::create(
                dest,
                &qcow2::CreateOptions {
                    virtual_size: size.div_ceil(512) * 512,
                    cluster_bits: qcow2::DEFAULT_CLUSTER_BITS,
                    backing,
                },
            )
        }
        (Format::Vhdx, None) => {
            let mut opts = vhdx::CreateOptions::dynamic(size);
            if source.format() == Format::Vhdx {
                opts.block_size = source.granularity() as u32;
            }
            vhdx::create(dest, &opts)
        }
        (Format::Vhdx, Some(p)) => {
            if job.dest_parent_format(p)? != Format::Vhdx {
                return Err(DiskError::invalid(
                    dest,
                    "a VHDX differencing image needs a VHDX parent",
                ));
            }
            vhdx::create_child(p, dest)
        }
    }
}

fn open_dest(job: &FlattenJob) -> Result<Box<dyn Image>> {
    Ok(match job.dest_format {
        Format::Raw => Box::new(RawImage::open(&job.dest, true)?),
        Format::Qcow2 => {
            let mut img = Qcow2Image::open(&job.dest, true)?;
            // A fresh output, deleted if the copy fails: no ordering fsyncs needed.
            img.set_ordered(false);
            Box::new(img)
        }
        Format::Vhdx => Box::new(vhdx::VhdxImage::open(&job.dest, true)?),
    })
}

/// Shared state of one `flatten_all` call.
struct Run<'a> {
    progress: Progress<'a>,
    cancel: &'a CancelToken,
    abort: AtomicBool,
    done: AtomicU64,
    total: u64,
    /// copy_file_range has failed with "not supported here": use read/write from now on.
    no_cfr: AtomicBool,
    /// COSNAP_NO_COPY_FILE_RANGE is set: host-to-host copies use pread/pwrite (what runs
    /// after EXDEV/EOPNOTSUPP), for tests and odd file systems.
    force_rw: bool,
    /// Whether the digesting copy of an output reads and writes its aligned pieces with
    /// `O_DIRECT` or through the page cache.
    io_path: IoPath,
}

/// How the digesting copy moves an output's bytes (`COSNAP_DIRECT_IO`: `1` = always
/// [`IoPath::Direct`], `0` = always [`IoPath::PageCache`], unset = [`IoPath::BySize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPath {
    /// `O_DIRECT`: no copy into or out of the page cache, no page-cache allocation, the
    /// VMs' cached data stays; each output keeps one read and one write in flight.
    Direct,
    /// The page cache: kernel read-ahead, and writes absorbed at memory speed.
    PageCache,
    /// `O_DIRECT` for outputs that copy at least [`IoPath::DIRECT_FROM`] bytes, the page
    /// cache below (docs/decisions.md, "Export copy: O_DIRECT for large outputs").
    BySize,
}

impl IoPath {
    /// From this many copied bytes per output, [`IoPath::BySize`] bypasses the page cache.
    pub const DIRECT_FROM: u64 = 512 << 20;

    /// The path `COSNAP_DIRECT_IO` asks for.
    pub fn from_env() -> IoPath {
        match std::env::var_os("COSNAP_DIRECT_IO") {
            None => IoPath::BySize,
            Some(v) if v == "0" => IoPath::PageCache,
            Some(_) => IoPath::Direct,
        }
    }

    /// Whether an output copying `bytes` goes around the page cache.
    pub fn is_direct(self, bytes: u64) -> bool {
        match self {
            IoPath::Direct => true,
            IoPath::PageCache => false,
            IoPath::BySize => bytes >= Self::DIRECT_FROM,
        }
    }
}

impl Run<'_> {
    fn check(&self) -> Result<()> {
        if self.cancel.is_cancelled() || self.abort.load(Ordering::SeqCst) {
            Err(DiskError::Cancelled)
        } else {
            Ok(())
        }
    }
    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::SeqCst) + n;
        (self.progress)(done.min(self.total), self.total);
    }
}

/// Flattens several images in parallel (up to `threads` at once), sparse, with
/// `copy_file_range` per extent where the layouts allow and read/write otherwise.
/// A failed or cancelled flatten removes the destination files it created.
pub fn flatten_all(
    jobs: &[FlattenJob],
    threads: usize,
    progress: Progress<'_>,
    cancel: &CancelToken,
) -> Result<Vec<FlattenReport>> {
    flatten(jobs, threads, progress, cancel, None)
}

/// [`flatten_all`], and each output's SHA-256 ([`FlattenReport::sha256`]) from the same
/// pass that copies its data (`copy_in_file_order`), so nobody reads the outputs again
/// to hash them. Progress counts the hashing as much work as the copy.
pub fn flatten_all_digested(
    jobs: &[FlattenJob],
    threads: usize,
    progress: Progress<'_>,
    cancel: &CancelToken,
) -> Result<Vec<FlattenReport>> {
    flatten(
        jobs,
        threads,
        progress,
        cancel,
        Some(DigestAlgorithm::Sha256),
    )
}

/// [`flatten_all_digested`] with another digest algorithm: [`FlattenReport::digest`] holds
/// it ([`FlattenReport::sha256`] only when `algorithm` is SHA-256).
pub fn flatten_all_digested_with(
    jobs: &[FlattenJob],
    threads: usize,
    algorithm: DigestAlgorithm,
    progress: Progress<'_>,
    cancel: &CancelToken,
) -> Result<Vec<FlattenReport>> {
    flatten(jobs, threads, progress, cancel, Some(algorithm))
}

fn flatten(
    jobs: &[FlattenJob],
    threads: usize,
    progress: Progress<'_>,
    cancel: &CancelToken,
    digest: Option<DigestAlgorithm>,
) -> Result<Vec<FlattenReport>> {
    let plans = jobs.iter().map(plan).collect::<Result<Vec<_>>>()?;
    let work: u64 = plans.iter().map(|p| p.work).sum();
    // Hashing reads about what the copy wrote (holes are skipped): count it once more.
    let total = if digest.is_some() {
        work.saturating_mul(2)
    } else {
        work
    };
    let force_rw = std::env::var_os("COSNAP_NO_COPY_FILE_RANGE").is_some();
    let run = Run {
        progress,
        cancel,
        abort: AtomicBool::new(false),
        done: AtomicU64::new(0),
        total,
        no_cfr: AtomicBool::new(false),
        force_rw,
        io_path: if force_rw {
            IoPath::PageCache
        } else {
            IoPath::from_env()
        },
    };
    let created: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let results: Mutex<Vec<Option<Result<FlattenReport>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let workers = threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs.len() {
                        break;
                    }
                    let r = flatten_one(&jobs[i], &plans[i], &run, &created, digest);
                    if r.is_err() {
                        run.abort.store(true, Ordering::SeqCst);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut reports = Vec::new();
    let mut first_err: Option<DiskError> = None;
    for r in results {
        match r {
            Some(Ok(rep)) => reports.push(rep),
            Some(Err(e)) => {
                // The job that failed first wins over the ones it cancelled.
                if first_err
                    .as_ref()
                    .is_none_or(|f| matches!(f, DiskError::Cancelled))
                {
                    first_err = Some(e);
                }
            }
            None => first_err = first_err.or(Some(DiskError::Cancelled)),
        }
    }
    if cancel.is_cancelled() && first_err.is_none() {
        first_err = Some(DiskError::Cancelled);
    }
    if let Some(e) = first_err {
        for p in created.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let _ = std::fs::remove_file(&p);
        }
        return Err(e);
    }
    (progress)(total, total);
    Ok(reports)
}

fn flatten_one(
    job: &FlattenJob,
    plan: &Plan,
    run: &Run<'_>,
    created: &Mutex<Vec<PathBuf>>,
    digest: Option<DigestAlgorithm>,
) -> Result<FlattenReport> {
    run.check()?;
    create_dest(job, plan.source.as_ref())?;
    created
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(job.dest.clone());
    let mut dest = open_dest(job)?;
    let src = plan.source.as_ref();
    let layer_list = layers(src);
    let sparse = job.dest_parent.is_none();
    let mut buf = vec![0u8; BUF];
    let mut data_bytes = 0;
    // Host-to-host copies, allocated in the destination during the walk and run afterwards
    // by several threads (allocation needs `&mut`, copying only the files).
    let mut directs: Vec<Direct<'_>> = Vec::new();
    for seg in &plan.segs {
        run.check()?;
        match seg.kind {
            SegKind::Zero => {
                dest.write_zeroes(seg.offset, seg.len)?;
                wrote(dest.file(), 0);
                run.advance(seg.len);
            }
            SegKind::Data { depth, host } => {
                let layer = layer_list.get(depth).copied();
                copy_data(
                    src,
                    layer,
                    host,
                    dest.as_mut(),
                    seg.offset,
                    seg.len,
                    sparse,
                    &mut buf,
                    run,
                    &mut directs,
                )?;
                data_bytes += seg.len;
            }
        }
    }
    drop(buf);
    let virtual_size = dest.virtual_size();
    let digest = if let Some(algorithm) = digest {
        // Metadata first (every allocation is already made), the image closed, then the
        // data in file order so that one pass both writes and hashes it.
        dest.flush()?;
        drop(dest);
        let hex = copy_in_file_order(&mut directs, &job.dest, plan.work, run, algorithm)?;
        Some(FileDigest { algorithm, hex })
    } else {
        run_directs(&directs, dest.as_ref(), run)?;
        run.check()?;
        dest.flush()?;
        None
    };
    Ok(FlattenReport {
        dest: job.dest.clone(),
        format: job.dest_format,
        virtual_size,
        data_bytes,
        ranges: plan.ranges.clone(),
        sha256: digest
            .as_ref()
            .filter(|d| d.algorithm == DigestAlgorithm::Sha256)
            .map(|d| d.hex.clone()),
        digest,
    })
}

/// Copies guest `[off, off + len)` (data held by `layer`, at `host` in its file if
/// contiguous) into `dest`.
#[allow(clippy::too_many_arguments)]
fn copy_data<'a>(
    src: &dyn Image,
    layer: Option<&'a dyn Image>,
    host: Option<u64>,
    dest: &mut dyn Image,
    off: u64,
    len: u64,
    sparse: bool,
    buf: &mut [u8],
    run: &Run<'_>,
    directs: &mut Vec<Direct<'a>>,
) -> Result<()> {
    let end = off + len;
    let (a, b) = if dest.format() == Format::Raw {
        (off, end)
    } else {
        let g = dest.granularity();
        (off.div_ceil(g) * g, end / g * g)
    };
    if sparse && layer.is_some_and(|l| l.granularity() >= LARGE_UNIT) {
        // Formats with large allocation units (VHDX blocks of 1 MiB and more) hold
        // mostly zeros in partly written blocks: read those and skip the zero chunks
        // rather than copying the whole block blindly.
        return copy_scanning(src, dest, off, len, a, b, buf, run);
    }
    let direct = match (host, layer) {
        (Some(h), Some(l)) if a < b && !run.no_cfr.load(Ordering::Relaxed) => Some((h, l)),
        _ => None,
    };
    let Some((h, l)) = direct else {
        return copy_buffered(src, dest, off, len, sparse, buf, run);
    };
    if a > off {
        copy_buffered(src, dest, off, a.min(end) - off, sparse, buf, run)?;
    }
    let mut pos = a;
    while pos < b {
        run.check()?;
        let n = (b - pos).min(DIRECT_PIECE);
        match dest.direct_write_target(pos, n)? {
            Some(t) => directs.push(Direct {
                layer: l,
                src_off: h + (pos - off),
                dst_off: t,
                len: n,
            }),
            None => copy_buffered(src, dest, pos, n, sparse, buf, run)?,
        }
        pos += n;
    }
    if b > a && b < end {
        copy_buffered(src, dest, b, end - b, sparse, buf, run)?;
    }
    Ok(())
}

/// One host-to-host copy: `len` bytes of `layer`'s file at `src_off` to the destination
/// file at `dst_off`.
struct Direct<'a> {
    layer: &'a dyn Image,
    src_off: u64,
    dst_off: u64,
    len: u64,
}

/// Threads per output for host-to-host copies: `COSNAP_COPY_THREADS`, else one.
///
/// Why one: every copy thread of an output writes the same file, and ext4 takes the
/// inode's lock for each buffered write — a second thread bought no wall time on a warm
/// cache and spent 40–60 % more CPU spinning on that lock. A cold source gets its reads
/// in flight from the kernel's own read-ahead inside `copy_file_range`; several outputs
/// still copy in parallel (one job each). No `posix_fadvise(WILLNEED)` hints: the kernel
/// serves them one 4 KiB page at a time, which cost 0.6× more CPU than the copy's own
/// large-folio read-ahead and bought no wall time (docs/decisions.md, copy CPU).
fn copy_threads() -> usize {
    std::env::var("COSNAP_COPY_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, 16))
}

fn run_directs(directs: &[Direct<'_>], dest: &dyn Image, run: &Run<'_>) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<DiskError>> = Mutex::new(None);
    let workers = copy_threads().min(directs.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                // Only the read/write fallback needs a buffer.
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(d) = directs.get(i) else { break };
                    let r = run.check().and_then(|_| {
                        copy_host(
                            d.layer.file(),
                            d.layer.path(),
                            d.src_off,
                            dest,
                            d.dst_off,
                            d.len,
                            &mut buf,
                            run,
                        )
                    });
                    if let Err(e) = r {
                        run.abort.store(true, Ordering::SeqCst);
                        let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                        if f.as_ref().is_none_or(|f| matches!(f, DiskError::Cancelled)) {
                            *f = Some(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies `[off, off + len)` reading through the source chain and writing only the
/// non-zero chunks (sparse destination). Destination units inside `[a, b)` are allocated
/// with [`Image::direct_write_target`] once they get data, and written straight into the
/// file; the rest goes through [`Image::write_at`].
#[allow(clippy::too_many_arguments)]
fn copy_scanning(
    src: &dyn Image,
    dest: &mut dyn Image,
    off: u64,
    len: u64,
    a: u64,
    b: u64,
    buf: &mut [u8],
    run: &Run<'_>,
) -> Result<()> {
    let end = off + len;
    if a >= b || dest.format() == Format::Raw {
        return copy_buffered(src, dest, off, len, true, buf, run);
    }
    if a > off {
        copy_buffered(src, dest, off, a - off, true, buf, run)?;
    }
    let g = dest.granularity();
    let mut unit = a;
    while unit < b {
        let mut target: Option<Option<u64>> = None;
        let mut pos = unit;
        while pos < unit + g {
            run.check()?;
            let n = (unit + g - pos).min(buf.len() as u64) as usize;
            src.read_at(&mut buf[..n], pos)?;
            if !is_zero(&buf[..n]) {
                if target.is_none() {
                    target = Some(dest.direct_write_target(unit, g)?);
                }
                match target {
                    Some(Some(t)) => {
                        dest.file()
                            .write_all_at(&buf[..n], t + (pos - unit))
                            .map_err(|e| DiskError::io(dest.path(), e))?;
                    }
                    _ => dest.write_at(&buf[..n], pos)?,
                }
                wrote(dest.file(), n as u64);
            }
            pos += n as u64;
            run.advance(n as u64);
        }
        unit += g;
    }
    if b < end {
        copy_buffered(src, dest, b, end - b, true, buf, run)?;
    }
    Ok(())
}

/// Reads through the source chain and writes through the destination image.
fn copy_buffered(
    src: &dyn Image,
    dest: &mut dyn Image,
    off: u64,
    len: u64,
    sparse: bool,
    buf: &mut [u8],
    run: &Run<'_>,
) -> Result<()> {
    let mut done = 0;
    while done < len {
        run.check()?;
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_at(&mut buf[..n], off + done)?;
        if !(sparse && is_zero(&buf[..n])) {
            dest.write_at(&buf[..n], off + done)?;
            wrote(dest.file(), n as u64);
        }
        done += n as u64;
        run.advance(n as u64);
    }
    Ok(())
}

/// Copies `len` host bytes from `src` at `src_off` to `dest`'s file at `dst_off`:
/// copy_file_range, or pread/pwrite where the kernel cannot.
#[allow(clippy::too_many_arguments)]
fn copy_host(
    src: &File,
    src_path: &Path,
    src_off: u64,
    dest: &dyn Image,
    dst_off: u64,
    len: u64,
    buf: &mut Vec<u8>,
    run: &Run<'_>,
) -> Result<()> {
    let dst = dest.file();
    let mut done = 0u64;
    if !run.force_rw && !run.no_cfr.load(Ordering::Relaxed) {
        while done < len {
            let mut off_in = (src_off + done) as libc::off64_t;
            let mut off_out = (dst_off + done) as libc::off64_t;
            let want = ((len - done) as usize).min(CFR_CALL);
            // SAFETY: valid fds, valid offset pointers, no aliasing of Rust memory.
            let r = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(
                        libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EBADF,
                    ) => {
                        run.no_cfr.store(true, Ordering::Relaxed);
                        break;
                    }
                    _ => return Err(DiskError::io(dest.path(), err)),
                }
            }
            if r == 0 {
                // Source ends early (data cluster past EOF reads as zeros): finish by hand.
                break;
            }
            done += r as u64;
            wrote(dst, r as u64);
            run.advance(r as u64);
        }
    }
    if done < len && buf.is_empty() {
        buf.resize(BUF, 0);
    }
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        read_full(src, src_off + done, chunk).map_err(|e| DiskError::io(src_path, e))?;
        dst.write_all_at(chunk, dst_off + done)
            .map_err(|e| DiskError::io(dest.path(), e))?;
        wrote(dst, n as u64);
        done += n as u64;
        run.advance(n as u64);
    }
    Ok(())
}

/// True if every byte is zero (word-wise: this runs over every byte a flatten reads).
fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128.
    let (head, words, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::IoPath;

    #[test]
    fn by_size_goes_around_the_page_cache_from_the_threshold_up() {
        let at = IoPath::DIRECT_FROM;

        assert!(!IoPath::BySize.is_direct(at - 1));
        assert!(IoPath::BySize.is_direct(at));
        assert!(IoPath::Direct.is_direct(0));
        assert!(!IoPath::PageCache.is_direct(u64::MAX));
    }
}
