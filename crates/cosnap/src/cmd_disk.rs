//! `cosnap disk …`: image commands over cosnap-disk.
//!
//! Exit codes follow `exit.rs`, except `compare` (0 same, 1 different, 2 error) and `check`
//! (0 clean, 2 corruption, 3 leaks only, 1 could not check), which keep qemu-img's codes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::{Subcommand, ValueEnum};
use cosnap_disk::FlattenJob;
use cosnap_disk::ops::{self, CancelToken, ChainExtent, CheckReport};
use cosnap_disk::{ExtentState, Format, Image};

use crate::exit::{CmdResult, Context, Failure};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Vhdx,
    Qcow2,
    Raw,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Vhdx => Format::Vhdx,
            FormatArg::Qcow2 => Format::Qcow2,
            FormatArg::Raw => Format::Raw,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// Format, virtual size, block size, chain and allocated bytes of an image.
    Info { image: PathBuf },
    /// Create an empty image, or a differencing child of --parent (a VHDX parent gives a
    /// VHDX child, a qcow2 or raw parent a qcow2 overlay).
    Create {
        path: PathBuf,
        #[arg(long, value_enum)]
        format: FormatArg,
        /// Virtual size: bytes, or with a K/M/G/T suffix (powers of 1024). Taken from the
        /// parent when --parent is given.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Write LENGTH bytes of PATTERN at OFFSET into the image's top layer.
    Write {
        image: PathBuf,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// The byte to write: decimal or 0xNN.
        #[arg(long, value_parser = parse_byte)]
        pattern: u8,
    },
    /// Flatten SRC's chain into a new image DST. With --base, only the ranges that changed
    /// above that ancestor are written: without --parent the result is a standalone image
    /// holding only those ranges (zeros elsewhere); with --parent it is a differencing
    /// image of that parent, so it shows SRC's bytes when the parent shows the base's.
    Convert {
        src: PathBuf,
        dst: PathBuf,
        #[arg(long, value_enum)]
        format: FormatArg,
        #[arg(long)]
        base: Option<PathBuf>,
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Compare guest contents: exit 0 identical, 1 different, 2 error (like qemu-img).
    Compare { a: PathBuf, b: PathBuf },
    /// Allocation map of the whole chain.
    Map { image: PathBuf },
    /// Structural check of one file: exit 0 clean, 2 corruption, 3 leaks only, 1 could not
    /// check (like qemu-img).
    Check { image: PathBuf },
}

/// Parses `123`, `64K`, `1M`, `10G`, `2T` (also `KiB`, `MB`, … — always powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{s:?}: unknown size suffix (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a byte: decimal or `0xNN`.
pub fn parse_byte(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => t.parse::<u8>(),
    };
    v.map_err(|_| format!("{s:?} is not a byte (0..255 or 0x00..0xff)"))
}

/// Says on stderr what content probing found when the file's name does not already say
/// it: these commands take paths a person typed and are the only place cosnap guesses a
/// format from the bytes (the host never does). A name that agrees stays silent, so
/// qemu-img-like outputs keep their shape.
fn say_probed(paths: &[&std::path::Path]) {
    for p in paths {
        let by_name = p
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_name);
        if let Ok(f) = ops::detect_format(p)
            && by_name != Some(f)
        {
            let name = by_name.map_or("no format".to_string(), |n| n.to_string());
            eprintln!(
                "cosnap: note: {} reads as {f} (probed from its content; its name says {name})",
                p.display()
            );
        }
    }
}

/// The existing images a command reads by probing (`info` prints the format it found).
fn probed_inputs(cmd: &DiskCmd) -> Vec<&std::path::Path> {
    match cmd {
        DiskCmd::Create {
            parent: Some(p), ..
        } => vec![p],
        DiskCmd::Write { image, .. } | DiskCmd::Map { image } | DiskCmd::Check { image } => {
            vec![image]
        }
        DiskCmd::Convert { src, .. } => vec![src],
        DiskCmd::Compare { a, b } => vec![a, b],
        DiskCmd::Info { .. } | DiskCmd::Create { .. } => vec![],
    }
}

pub fn run(ctx: &Context, cmd: DiskCmd) -> CmdResult {
    say_probed(&probed_inputs(&cmd));
    match cmd {
        DiskCmd::Info { image } => run_info(ctx, &image),
        DiskCmd::Create {
            path,
            format,
            size,
            parent,
        } => run_create(ctx, &path, format.into(), size, parent.as_deref()),
        DiskCmd::Write {
            image,
            offset,
            length,
            pattern,
        } => {
            ops::write_pattern(&image, offset, length, pattern)?;
            Ok(0)
        }
        DiskCmd::Convert {
            src,
            dst,
            format,
            base,
            parent,
        } => {
            let job = FlattenJob {
                base,
                dest_parent: parent,
                ..FlattenJob::whole(src, dst, format.into())
            };
            run_convert(ctx, job)
        }
        DiskCmd::Compare { a, b } => run_compare(&a, &b),
        DiskCmd::Map { image } => run_map(ctx, &image),
        DiskCmd::Check { image } => run_check(ctx, &image),
    }
}

fn run_info(ctx: &Context, image: &Path) -> CmdResult {
    let info = ops::info(image)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }

    println!("image: {}", info.path.display());
    println!("file format: {}", info.format);
    println!(
        "virtual size: {} ({} bytes)",
        human(info.virtual_size),
        info.virtual_size
    );
    println!("block size: {}", info.block_size);
    println!("allocated bytes: {}", info.allocated_bytes);
    let chain: Vec<String> = info.chain.iter().map(|p| p.display().to_string()).collect();
    println!("chain: {}", chain.join(" -> "));
    Ok(0)
}

fn run_create(
    ctx: &Context,
    path: &Path,
    format: Format,
    size: Option<u64>,
    parent: Option<&Path>,
) -> CmdResult {
    match parent {
        Some(parent) => {
            check_child_fits_parent(parent, format, size)?;
            ops::create_child(parent, path)?;
        }
        None => {
            let size = size.ok_or_else(|| anyhow!("--size is required without --parent"))?;
            ops::create(path, format, size)?;
        }
    }

    if ctx.json {
        println!("{}", serde_json::json!({ "path": path, "format": format }));
    }
    Ok(0)
}

/// A child keeps its parent's virtual size and its family's format (VHDX under VHDX, qcow2
/// over anything else).
fn check_child_fits_parent(
    parent: &Path,
    format: Format,
    size: Option<u64>,
) -> Result<(), Failure> {
    if let Some(size) = size {
        let psize = ops::open(parent, false)?.virtual_size();
        if size != psize {
            return Err(
                anyhow!("--size {size} differs from the parent's virtual size {psize}").into(),
            );
        }
    }

    let expected = match ops::detect_format(parent)? {
        Format::Vhdx => Format::Vhdx,
        _ => Format::Qcow2,
    };
    if expected != format {
        return Err(anyhow!(
            "a child of {} must be {expected}, not {format}",
            parent.display()
        )
        .into());
    }
    Ok(())
}

fn run_convert(ctx: &Context, job: FlattenJob) -> CmdResult {
    let reports = cosnap_disk::flatten_all(&[job], 1, &|_, _| {}, &CancelToken::new())?;
    let report = &reports[0];
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!(
            "wrote {} ({}, {} data bytes in {} ranges)",
            report.dest.display(),
            report.format,
            report.data_bytes,
            report.ranges.len()
        );
    }
    Ok(0)
}

fn run_compare(a: &Path, b: &Path) -> CmdResult {
    match ops::compare(a, b) {
        Ok(None) => {
            println!("Images are identical.");
            Ok(0)
        }
        Ok(Some(off)) => {
            println!("Content mismatch at offset {off}!");
            Ok(1)
        }
        Err(e) => Err(Failure::new(2, e)),
    }
}

fn run_map(ctx: &Context, image: &Path) -> CmdResult {
    let img = ops::open(image, false)?;
    let layers = ops::layers(img.as_ref());
    let map = ops::chain_map(img.as_ref(), 0, img.virtual_size())?;
    if ctx.json {
        let v: Vec<serde_json::Value> = map.iter().map(|e| map_entry_json(e, &layers)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }

    println!("Offset              Length              State     File");
    for e in &map {
        let state = match e.state {
            ExtentState::Data { .. } => "data",
            ExtentState::Zero => "zero",
            ExtentState::Inherited => continue,
        };
        let file = layers
            .get(e.depth)
            .map(|l| l.path().display().to_string())
            .unwrap_or_default();
        println!("{:<#20x}{:<#20x}{:<10}{}", e.offset, e.len, state, file);
    }
    Ok(0)
}

fn map_entry_json(e: &ChainExtent, layers: &[&dyn Image]) -> serde_json::Value {
    let mut o = serde_json::json!({
        "start": e.offset,
        "length": e.len,
        // Like qemu-img: unallocated ranges get the bottom layer's depth.
        "depth": e.depth.min(layers.len() - 1),
        "present": e.state != ExtentState::Inherited,
        "zero": !matches!(e.state, ExtentState::Data { .. }),
        "data": matches!(e.state, ExtentState::Data { .. }),
    });
    if let ExtentState::Data {
        host_offset: Some(h),
    } = e.state
    {
        o["offset"] = h.into();
    }
    if let Some(l) = layers.get(e.depth) {
        o["filename"] = l.path().display().to_string().into();
    }
    o
}

fn run_check(ctx: &Context, image: &Path) -> CmdResult {
    let report = ops::check(image)
        .with_context(|| format!("could not check {}", image.display()))
        .map_err(|e| Failure::new(1, e))?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_check_report(&report);
    }

    Ok(if !report.corruptions.is_empty() {
        2
    } else if !report.leaks.is_empty() {
        3
    } else {
        0
    })
}

fn print_check_report(report: &CheckReport) {
    for c in &report.corruptions {
        println!("ERROR {c}");
    }
    for l in &report.leaks {
        println!("Leaked cluster: {l}");
    }

    if !report.corruptions.is_empty() {
        println!(
            "{} errors were found on the image.",
            report.corruptions.len()
        );
    } else if !report.leaks.is_empty() {
        println!(
            "{} leaked clusters were found on the image.",
            report.leaks.len()
        );
    } else {
        println!("No errors were found on the image.");
    }
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}
