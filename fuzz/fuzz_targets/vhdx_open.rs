//! Fuzz target for the VHDX open-and-read path.
//!
//! Raw files rarely get past the CRCs and the 1 MiB header section, so besides raw input
//! (when it starts with "vhdxfile") the input is read as byte mutations applied to a
//! valid template: a differencing child (partly present blocks, a sector bitmap, a
//! pending log entry) over a small base. Mutations land in the headers, region tables,
//! log, metadata region and BAT, optionally with CRCs re-sealed so they reach the deeper
//! checks. Each case: open read-only (log replayed in memory, parent chain checked), read
//! a few ranges, map the layer, run the structural check. Panics, hangs and huge
//! allocations are bugs; errors are expected.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cosnap_disk::Image;
use cosnap_disk::vhdx::{self, CreateOptions, VhdxImage};
use libfuzzer_sys::fuzz_target;

const MIB: u64 = 1 << 20;

struct Template {
    dir: PathBuf,
    child: Vec<u8>,
}

fn seal(b: &mut [u8], at: usize) {
    b[at..at + 4].fill(0);
    let c = crc32c::crc32c(b);
    b[at..at + 4].copy_from_slice(&c.to_le_bytes());
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Puts a pending log entry (rewriting the BAT's first sector as it is) into `img`.
fn add_pending_log(img: &mut [u8]) {
    let (h1, h2) = (64 << 10, 128 << 10);
    let cur = if le64(img, h2 + 8) > le64(img, h1 + 8) {
        h2
    } else {
        h1
    };
    let other = if cur == h1 { h2 } else { h1 };
    let log_off = le64(img, cur + 72) as usize;
    let bat_off = 3 * MIB as usize; // cosnap's layout
    let guid = [0x42u8; 16];
    let seq = 9u64;
    let mut e = vec![0u8; 8192];
    e[0..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&8192u32.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&1u32.to_le_bytes());
    e[32..48].copy_from_slice(&guid);
    let len = img.len() as u64;
    e[48..56].copy_from_slice(&len.to_le_bytes());
    e[56..64].copy_from_slice(&len.to_le_bytes());
    let data = img[bat_off..bat_off + 4096].to_vec();
    e[64..68].copy_from_slice(b"desc");
    e[68..72].copy_from_slice(&data[4092..4096]);
    e[72..80].copy_from_slice(&data[0..8]);
    e[80..88].copy_from_slice(&(bat_off as u64).to_le_bytes());
    e[88..96].copy_from_slice(&seq.to_le_bytes());
    e[4096..4100].copy_from_slice(b"data");
    e[4100..4104].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
    e[4104..8188].copy_from_slice(&data[8..4092]);
    e[8188..8192].copy_from_slice(&(seq as u32).to_le_bytes());
    seal(&mut e, 4);
    img[log_off..log_off + 8192].copy_from_slice(&e);
    let mut h = img[cur..cur + 4096].to_vec();
    let s = le64(&h, 8) + 1;
    h[8..16].copy_from_slice(&s.to_le_bytes());
    h[48..64].copy_from_slice(&guid);
    seal(&mut h, 4);
    img[other..other + 4096].copy_from_slice(&h);
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        // Memory-backed when possible: every case writes a ~6 MiB file.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tmp.join(format!("cosnap-fuzz-vhdx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.vhdx");
        let mut o = CreateOptions::dynamic(8 * MIB);
        o.block_size = MIB as u32;
        vhdx::create(&base, &o).unwrap();
        {
            let mut b = VhdxImage::open(&base, true).unwrap();
            b.write_at(&[0xaa; 3 * MIB as usize], 0).unwrap();
        }
        let child = dir.join("child.avhdx");
        vhdx::create_child(&base, &child).unwrap();
        {
            let mut c = VhdxImage::open(&child, true).unwrap();
            c.write_at(&[0x55; 3000], 700).unwrap();
            c.write_at(&[0x66; MIB as usize], 2 * MIB).unwrap();
            c.write_zeroes(4 * MIB, MIB).unwrap();
        }
        let mut bytes = std::fs::read(&child).unwrap();
        add_pending_log(&mut bytes);
        Template { dir, child: bytes }
    })
}

fn exercise(path: &Path) {
    let _ = vhdx::check(path);
    let _ = vhdx::parent_path(path);
    if let Ok(img) = VhdxImage::open(path, false) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; 64 * 1024];
        for off in [
            0,
            700,
            2 * MIB - 100,
            size / 3,
            size.saturating_sub(buf.len() as u64),
        ] {
            let off = off.min(size);
            let n = (buf.len() as u64).min(size - off) as usize;
            let _ = img.read_at(&mut buf[..n], off);
        }
        let _ = img.layer_map(0, size.min(1 << 34));
    }
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let path = t.dir.join("input.avhdx");
    let bytes = if vhdx::is_vhdx(data) {
        data.to_vec()
    } else {
        let mut img = t.child.clone();
        let areas: [usize; 7] = [
            0,
            64 << 10,
            128 << 10,
            192 << 10,
            MIB as usize,
            2 * MIB as usize,
            3 * MIB as usize,
        ];
        let mut reseal = false;
        for m in data.chunks_exact(4) {
            reseal |= m[0] & 0x80 != 0;
            let base = areas[(m[0] & 0x7f) as usize % areas.len()];
            let at = base + u16::from_le_bytes([m[1], m[2]]) as usize;
            if at < img.len() {
                img[at] = m[3];
            }
        }
        if data.len() % 4 == 1 {
            img.truncate(img.len() * data[data.len() - 1] as usize / 256);
        }
        if reseal && img.len() >= 5 * MIB as usize {
            for h in [64usize << 10, 128 << 10] {
                seal(&mut img[h..h + 4096], 4);
            }
            for r in [192usize << 10, 256 << 10] {
                seal(&mut img[r..r + 65536], 4);
            }
            let l = MIB as usize;
            let len = u32::from_le_bytes(img[l + 8..l + 12].try_into().unwrap()) as usize;
            if &img[l..l + 4] == b"loge" && len > 0 && len <= MIB as usize {
                seal(&mut img[l..l + len], 4);
            }
        }
        img
    };
    if std::fs::write(&path, &bytes).is_ok() {
        exercise(&path);
    }
});
