//! The copy engine and changed ranges: exact ranges, expected bytes, cancellation, progress.

use std::path::Path;

use cosnap_disk::FlattenJob;
use cosnap_disk::ops::{self, CancelToken};
use cosnap_disk::{DiskError, Format};
use cosnap_test_support::{RawModel, ok, p, qemu_check_clean, qemu_io, qemu_same};

const MIB: u64 = 1 << 20;

/// base (qemu-made qcow2) ← mid ← top, with known writes; returns (base, mid, top).
fn chain(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let base = dir.join("base.qcow2");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&base), "256M"],
    );
    qemu_io(
        &base,
        "qcow2",
        &["write -P 0xaa 0 16M", "write -P 0xab 200M 4M"],
    );
    ops::create_child(&base, &mid).unwrap();
    ops::write_pattern(&mid, 3 * MIB, MIB, 0x11).unwrap();
    ops::write_pattern(&mid, 100 * MIB + 512, 1000, 0x12).unwrap();
    ops::create_child(&mid, &top).unwrap();
    ops::write_pattern(&top, 8 * MIB, 2 * MIB, 0x21).unwrap();
    {
        let mut t = ops::open(&top, true).unwrap();
        t.write_zeroes(201 * MIB, MIB).unwrap();
        t.flush().unwrap();
    }
    (base, mid, top)
}

/// Every `(done, total)` a flatten reported.
#[derive(Default)]
struct ProgressLog(std::sync::Mutex<Vec<(u64, u64)>>);

impl ProgressLog {
    fn record(&self, done: u64, total: u64) {
        self.0.lock().unwrap().push((done, total));
    }
    /// The work itself (not only the closing `(total, total)` every flatten ends with)
    /// reached the total, went through values in between, and never passed it.
    fn assert_complete(&self) {
        let calls = self.0.lock().unwrap();
        let (&last, work) = calls.split_last().expect("progress was reported");
        let total = last.1;
        assert!(total > 0 && last.0 == total, "{last:?}");
        assert!(
            work.iter().all(|&(d, t)| t == total && d <= total),
            "{work:?}"
        );
        assert_eq!(
            work.iter().map(|c| c.0).max(),
            Some(total),
            "the work fell short"
        );
        assert!(
            work.iter().any(|&(d, _)| d > 0 && d < total),
            "no intermediate progress"
        );
    }
}

#[test]
fn changed_ranges_are_exact() {
    let d = tempfile::tempdir().unwrap();
    let (base, mid, top) = chain(d.path());
    let c = 64 * 1024;
    // Above base: mid's clusters and top's clusters (cluster granularity, merged).
    let r = ops::changed_ranges(&top, &base).unwrap();
    assert_eq!(
        r,
        vec![
            3 * MIB..4 * MIB,
            8 * MIB..10 * MIB,
            100 * MIB..100 * MIB + c,
            201 * MIB..202 * MIB,
        ]
    );
    let r = ops::changed_ranges(&top, &mid).unwrap();
    assert_eq!(r, vec![8 * MIB..10 * MIB, 201 * MIB..202 * MIB]);
    assert!(ops::changed_ranges(&top, &top).unwrap().is_empty());
    let other = d.path().join("other.raw");
    ops::create(&other, Format::Raw, MIB).unwrap();
    assert!(matches!(
        ops::changed_ranges(&top, &other),
        Err(DiskError::Invalid { .. })
    ));
}

#[test]
fn flatten_chain_to_every_format() {
    let d = tempfile::tempdir().unwrap();
    let (_base, _mid, top) = chain(d.path());
    let expect = d.path().join("expect.raw");
    ok("qemu-img", &["convert", "-O", "raw", p(&top), p(&expect)]);
    for fmt in [Format::Raw, Format::Qcow2] {
        let dest = d.path().join(format!("flat.{fmt}"));
        let log = ProgressLog::default();
        let reports = cosnap_disk::flatten_all(
            &[FlattenJob::whole(top.clone(), dest.clone(), fmt)],
            2,
            &|d, t| log.record(d, t),
            &CancelToken::new(),
        )
        .unwrap();
        log.assert_complete();
        qemu_same(&dest, fmt.name(), &expect);
        if fmt == Format::Qcow2 {
            qemu_check_clean(&dest);
        }
        assert_eq!(reports[0].virtual_size, 256 * MIB);
        // Sparse: only the data was allocated.
        let alloc = std::fs::metadata(&dest)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap();
        assert!(alloc < 40 * MIB, "{fmt}: {alloc} bytes allocated");
        assert_eq!(ops::chain(&dest).unwrap().len(), 1);
    }
}

#[test]
fn flatten_only_above_base() {
    let d = tempfile::tempdir().unwrap();
    let (base, _mid, top) = chain(d.path());
    let expect = d.path().join("expect.raw");
    ok("qemu-img", &["convert", "-O", "raw", p(&top), p(&expect)]);
    // Standalone delta: only the changed ranges, zeros elsewhere.
    let delta = d.path().join("delta.qcow2");
    let rep = cosnap_disk::flatten_all(
        &[FlattenJob {
            base: Some(base.clone()),
            ..FlattenJob::whole(top.clone(), delta.clone(), Format::Qcow2)
        }],
        1,
        &|_, _| {},
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(rep[0].ranges, ops::changed_ranges(&top, &base).unwrap());
    qemu_check_clean(&delta);
    let delta_expect = d.path().join("delta.raw");
    let model = RawModel::new(&delta_expect, 256 * MIB);
    model.write(3 * MIB, MIB, 0x11);
    model.write(8 * MIB, 2 * MIB, 0x21);
    model.write(100 * MIB + 512, 1000, 0x12);
    qemu_same(&delta, "qcow2", &delta_expect);
    // As a differencing image of a copy of base: shows exactly top's bytes.
    let base_copy = d.path().join("base-copy.qcow2");
    ok(
        "qemu-img",
        &["convert", "-O", "qcow2", p(&base), p(&base_copy)],
    );
    let diff = d.path().join("diff.qcow2");
    cosnap_disk::flatten_all(
        &[FlattenJob {
            base: Some(base.clone()),
            dest_parent: Some(base_copy.clone()),
            ..FlattenJob::whole(top.clone(), diff.clone(), Format::Qcow2)
        }],
        1,
        &|_, _| {},
        &CancelToken::new(),
    )
    .unwrap();
    qemu_check_clean(&diff);
    qemu_same(&diff, "qcow2", &expect);
    assert_eq!(ops::chain(&diff).unwrap().len(), 2);
}

#[test]
fn parallel_jobs_and_raw_sources() {
    let d = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    for i in 0..3u8 {
        let src = d.path().join(format!("src{i}.raw"));
        ok("qemu-img", &["create", "-q", "-f", "raw", p(&src), "64M"]);
        qemu_io(
            &src,
            "raw",
            &[&format!("write -P {} {}M 3M", i + 1, i * 10 + 1)],
        );
        for fmt in [Format::Raw, Format::Qcow2] {
            jobs.push(FlattenJob::whole(
                src.clone(),
                d.path().join(format!("out{i}.{fmt}")),
                fmt,
            ));
        }
    }
    let reports = cosnap_disk::flatten_all(&jobs, 3, &|_, _| {}, &CancelToken::new()).unwrap();
    assert_eq!(reports.len(), 6);
    for j in &jobs {
        assert_eq!(ops::compare(&j.source, &j.dest).unwrap(), None);
        qemu_same(&j.dest, j.dest_format.name(), &j.source);
    }
}

#[test]
fn cancellation_and_failure_remove_outputs() {
    let d = tempfile::tempdir().unwrap();
    let (_base, _mid, top) = chain(d.path());
    let dest = d.path().join("cancelled.qcow2");
    for digested in [false, true] {
        let cancel = CancelToken::new();
        let c2 = cancel.clone();
        let job = [FlattenJob::whole(top.clone(), dest.clone(), Format::Qcow2)];
        // Plain copy: at the first progress; digesting copy: halfway through its
        // copy-and-hash pass.
        let stop = move |done: u64, total: u64| {
            if (digested && done * 2 > total) || (!digested && done > 0) {
                c2.cancel();
            }
        };
        let r = if digested {
            cosnap_disk::flatten_all_digested(&job, 1, &stop, &cancel)
        } else {
            cosnap_disk::flatten_all(&job, 1, &stop, &cancel)
        };
        assert!(
            matches!(r, Err(DiskError::Cancelled)),
            "digested {digested}: {r:?}"
        );
        assert!(!dest.exists());
    }
    // One job fails (destination exists): the other's output is removed, the existing file kept.
    let existing = d.path().join("existing.raw");
    std::fs::write(&existing, b"keep me").unwrap();
    let fresh = d.path().join("fresh.raw");
    let r = cosnap_disk::flatten_all(
        &[
            FlattenJob::whole(top.clone(), fresh.clone(), Format::Raw),
            FlattenJob::whole(top.clone(), existing.clone(), Format::Raw),
        ],
        1,
        &|_, _| {},
        &CancelToken::new(),
    );
    assert!(r.is_err());
    assert!(!fresh.exists());
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
}

/// `sha256sum` of a file (coreutils: an oracle independent of the `sha2` crate).
fn sha256sum(path: &Path) -> String {
    ok("sha256sum", &[p(path)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn digested_flatten_reports_the_outputs_sha256() {
    let d = tempfile::tempdir().unwrap();
    let (base, _mid, top) = chain(d.path());
    let expect = d.path().join("expect.raw");
    ok("qemu-img", &["convert", "-O", "raw", p(&top), p(&expect)]);
    // A VHDX chain as a second source: large blocks take the scanning path.
    let vbase = d.path().join("v.vhdx");
    let vtop = d.path().join("v.avhdx");
    ops::create(&vbase, Format::Vhdx, 128 * MIB).unwrap();
    ops::write_pattern(&vbase, 5 * MIB, 3 * MIB, 0x31).unwrap();
    ops::create_child(&vbase, &vtop).unwrap();
    ops::write_pattern(&vtop, 6 * MIB, 100 * 1024, 0x32).unwrap();
    let vexpect = d.path().join("vexpect.raw");
    let model = RawModel::new(&vexpect, 128 * MIB);
    model.write(5 * MIB, 3 * MIB, 0x31);
    model.write(6 * MIB, 100 * 1024, 0x32);
    let base_copy = d.path().join("base-copy.qcow2");
    ok(
        "qemu-img",
        &["convert", "-O", "qcow2", p(&base), p(&base_copy)],
    );
    let mut jobs = Vec::new();
    for fmt in [Format::Raw, Format::Qcow2, Format::Vhdx] {
        jobs.push(FlattenJob::whole(
            top.clone(),
            d.path().join(format!("full.{fmt}")),
            fmt,
        ));
        jobs.push(FlattenJob::whole(
            vtop.clone(),
            d.path().join(format!("vfull.{fmt}")),
            fmt,
        ));
    }
    jobs.push(FlattenJob {
        base: Some(base.clone()),
        dest_parent: Some(base_copy.clone()),
        ..FlattenJob::whole(top.clone(), d.path().join("diff.qcow2"), Format::Qcow2)
    });
    let log = ProgressLog::default();
    let reports =
        cosnap_disk::flatten_all_digested(&jobs, 3, &|d, t| log.record(d, t), &CancelToken::new())
            .unwrap();
    log.assert_complete();
    for (job, rep) in jobs.iter().zip(&reports) {
        let name = job.dest.display();
        assert_eq!(
            rep.sha256.as_deref(),
            Some(sha256sum(&job.dest).as_str()),
            "{name}"
        );
        if job.dest_format == Format::Qcow2 {
            qemu_check_clean(&job.dest);
        }
        let want = if job.source == vtop {
            &vexpect
        } else {
            &expect
        };
        qemu_same(&job.dest, job.dest_format.name(), want);
        // The digest covers the file as it stays: reopening and closing changes nothing.
        drop(ops::open(&job.dest, false).unwrap());
        assert_eq!(
            rep.sha256.as_deref(),
            Some(sha256sum(&job.dest).as_str()),
            "{name}"
        );
    }
    // Sparse as before: the 256 MiB chain holds about 23 MiB of data.
    let alloc = std::fs::metadata(d.path().join("full.qcow2"))
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap();
    assert!(alloc < 40 * MIB, "{alloc} bytes allocated");
}
