//! Raw images, with allocation from SEEK_DATA/SEEK_HOLE.
//!
//! A raw image is its own file: guest byte `n` is file byte `n`. Its allocation map comes
//! from the file system: data extents are `Data { host_offset: Some(offset) }`, holes are
//! `Inherited` (a raw file has no parent, so holes read as zeros).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{DiskError, Result};
use crate::image::{Extent, ExtentState, Format, Image};
use crate::sparse;

/// Allocation granularity reported for raw files (the usual file-system block).
pub const RAW_GRANULARITY: u64 = 4096;

/// An open raw image (a regular file or a block device).
pub struct RawImage {
    path: PathBuf,
    file: File,
    size: u64,
    writable: bool,
}

impl RawImage {
    /// Opens the raw image at `path`, read-write if `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<RawImage> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| DiskError::io(path, e))?;
        let size = file_size(&file).map_err(|e| DiskError::io(path, e))?;
        Ok(RawImage {
            path: path.to_path_buf(),
            file,
            size,
            writable,
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DiskError::invalid(
                &self.path,
                format!(
                    "range {offset}+{len} is past the virtual size {}",
                    self.size
                ),
            )),
        }
    }
}

/// Size of a regular file or a block device.
fn file_size(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // SAFETY: lseek on a valid fd owned by `file`.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(end as u64)
    }
}

/// Creates a sparse raw file of `virtual_size` bytes. Fails if `path` exists.
pub fn create(path: &Path, virtual_size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    file.set_len(virtual_size)
        .map_err(|e| DiskError::io(path, e))?;
    file.sync_all().map_err(|e| DiskError::io(path, e))
}

impl Image for RawImage {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn file(&self) -> &File {
        &self.file
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn granularity(&self) -> u64 {
        RAW_GRANULARITY
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| DiskError::io(&self.path, e))
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(DiskError::invalid(&self.path, "image is open read-only"));
        }
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| DiskError::io(&self.path, e))
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(DiskError::invalid(&self.path, "image is open read-only"));
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if sparse::punch_hole(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        // No hole punching here (tmpfs on old kernels, some network file systems): write zeros.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|e| DiskError::io(&self.path, e))?;
            done += n as u64;
        }
        Ok(())
    }
    fn direct_write_target(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        self.check_range(offset, len)?;
        Ok(if self.writable { Some(offset) } else { None })
    }
    fn flush(&mut self) -> Result<()> {
        if self.writable {
            self.file
                .sync_all()
                .map_err(|e| DiskError::io(&self.path, e))?;
        }
        Ok(())
    }
    fn layer_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let end = offset + len;
        let data = sparse::data_extents(&self.file, offset..end)
            .map_err(|e| DiskError::io(&self.path, e))?;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        for (start, n) in data {
            let start = start.max(pos);
            let stop = (start + n).min(end);
            if stop <= start {
                continue;
            }
            if start > pos {
                out.push(Extent {
                    offset: pos,
                    len: start - pos,
                    state: ExtentState::Inherited,
                });
            }
            match out.last_mut() {
                Some(last)
                    if matches!(last.state, ExtentState::Data { .. })
                        && last.offset + last.len == start =>
                {
                    last.len += stop - start;
                }
                _ => out.push(Extent {
                    offset: start,
                    len: stop - start,
                    state: ExtentState::Data {
                        host_offset: Some(start),
                    },
                }),
            }
            pos = stop;
        }
        if pos < end {
            out.push(Extent {
                offset: pos,
                len: end - pos,
                state: ExtentState::Inherited,
            });
        }
        Ok(out)
    }
    fn parent(&self) -> Option<&dyn Image> {
        None
    }
}
