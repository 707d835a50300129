//! The body the copy-path tests share: plain and digesting flattens of a qcow2 chain into
//! raw and qcow2 give the bytes qemu-img gives, and the digest `sha256sum` gives. Each test
//! binary sets one process-wide environment variable that picks the copy path, then runs it.

use cosnap_disk::FlattenJob;
use cosnap_disk::Format;
use cosnap_disk::ops::CancelToken;
use cosnap_test_support::{ok, p, qemu_check_clean, qemu_io, qemu_same};

pub fn flattens_give_the_same_bytes_and_digest() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    let top = d.path().join("top.qcow2");
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&base), "128M"],
    );
    qemu_io(
        &base,
        "qcow2",
        &["write -P 0xaa 0 5M", "write -P 0xab 64M 3M"],
    );
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    qemu_io(&top, "qcow2", &["write -P 0x11 1M 100k", "write -z 65M 1M"]);
    let expect = d.path().join("expect.raw");
    ok("qemu-img", &["convert", "-O", "raw", p(&top), p(&expect)]);
    // Plain and digesting copies.
    for digested in [false, true] {
        for fmt in [Format::Raw, Format::Qcow2] {
            let dest = d.path().join(format!("out-{digested}.{fmt}"));
            let job = [FlattenJob::whole(top.clone(), dest.clone(), fmt)];
            let flatten = if digested {
                cosnap_disk::flatten_all_digested
            } else {
                cosnap_disk::flatten_all
            };
            let reports = flatten(&job, 1, &|_, _| {}, &CancelToken::new()).unwrap();
            qemu_same(&dest, fmt.name(), &expect);
            if fmt == Format::Qcow2 {
                qemu_check_clean(&dest);
            }
            if digested {
                let sum = ok("sha256sum", &[p(&dest)]);
                assert_eq!(
                    reports[0].sha256.as_deref(),
                    sum.split_whitespace().next(),
                    "{}",
                    dest.display()
                );
            }
        }
    }
}
