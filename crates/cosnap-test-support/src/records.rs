//! The consistency checker for the test guest's records: reads a disk's guest-visible bytes
//! through a reader the caller gives and checks (a) each disk holds a gap-free prefix of
//! intact records then zeros, (b) one VM's disk counts are non-increasing in write order and
//! at most 1 apart, (c) no follower record carries a leader step the leader's images lack.
//!
//! Record `n` of a disk is 4096 bytes at offset `n * 4096`: 64 identical 64-byte lines
//! `COSNAP vm=<vm> disk=<disk> seq=<%010d> peer=<%010d>`, space padded, ending in `\n`.
//! Step `n` writes record `n` to every disk of the VM in order; a follower's record carries
//! the leader step it was told of (the leader sends `n` once its step `n` is complete).

use std::fmt;
use std::io;

/// Bytes of one record (one `dd bs=4096` write).
pub const RECORD_BYTES: u64 = 4096;
/// Bytes of one line, newline included.
pub const LINE_BYTES: usize = 64;
/// Bytes read per call to the reader while scanning.
const CHUNK_BYTES: usize = 1 << 20;

/// Reads guest-visible bytes of one disk: fills the buffer from the given guest offset.
pub type GuestReader<'a> = dyn FnMut(&mut [u8], u64) -> io::Result<()> + 'a;

/// What one disk holds: `count` intact records, the highest peer value among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecords {
    pub disk: String,
    pub count: u64,
    pub max_peer: Option<u64>,
}

/// One VM's disks, in the order its writer writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecords {
    pub vm: String,
    pub disks: Vec<DiskRecords>,
}

impl VmRecords {
    /// The smallest record count over the VM's disks (0 without disks).
    pub fn min_count(&self) -> u64 {
        self.disks.iter().map(|d| d.count).min().unwrap_or(0)
    }

    /// The highest peer value over the VM's disks.
    pub fn max_peer(&self) -> Option<u64> {
        self.disks.iter().filter_map(|d| d.max_peer).max()
    }
}

/// A failed check; each names the VM, disk and record so a person can look.
#[derive(Debug)]
pub enum RecordError {
    /// (a) A record that is neither intact nor zeros.
    Torn {
        vm: String,
        disk: String,
        index: u64,
        why: String,
    },
    /// (a) Data after the first all-zero record.
    Gap {
        vm: String,
        disk: String,
        zero_record: u64,
        data_at: u64,
    },
    /// (b) One VM's disk counts break the write order or differ by more than 1.
    Counts { vm: String, counts: Vec<u64> },
    /// (c) A follower record carries a step the leader's images do not hold.
    PeerAhead {
        leader: String,
        follower: String,
        peer: u64,
        leader_min_count: u64,
    },
    /// The caller's reader failed.
    Read {
        vm: String,
        disk: String,
        offset: u64,
        source: io::Error,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Torn {
                vm,
                disk,
                index,
                why,
            } => {
                write!(f, "{vm}/{disk}: record {index} is torn: {why}")
            }
            RecordError::Gap {
                vm,
                disk,
                zero_record,
                data_at,
            } => write!(
                f,
                "{vm}/{disk}: record {zero_record} is zeros but data follows at byte {data_at}"
            ),
            RecordError::Counts { vm, counts } => write!(
                f,
                "{vm}: disk record counts {counts:?} are not non-increasing and at most 1 apart"
            ),
            RecordError::PeerAhead {
                leader,
                follower,
                peer,
                leader_min_count,
            } => write!(
                f,
                "{follower} recorded {leader}'s step {peer}, but {leader}'s images hold only \
                 {leader_min_count} complete steps (effect without its cause)"
            ),
            RecordError::Read {
                vm,
                disk,
                offset,
                source,
            } => write!(f, "{vm}/{disk}: reading at {offset}: {source}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// The line the guest writes for (vm, disk, seq, peer), newline included.
pub fn record_line(vm: &str, disk: &str, seq: u64, peer: u64) -> String {
    let text = format!("COSNAP vm={vm} disk={disk} seq={seq:010} peer={peer:010}");
    format!("{text:<63}\n")
}

/// The 4096 bytes of record `seq`, as the guest writes them.
pub fn record_bytes(vm: &str, disk: &str, seq: u64, peer: u64) -> Vec<u8> {
    record_line(vm, disk, seq, peer)
        .repeat(RECORD_BYTES as usize / LINE_BYTES)
        .into_bytes()
}

/// Check (a) on one disk of `size` guest bytes: a gap-free prefix of intact records, then
/// zeros to the end. Reads every byte once, in 1 MiB chunks.
pub fn scan_disk(
    vm: &str,
    disk: &str,
    size: u64,
    read: &mut GuestReader<'_>,
) -> Result<DiskRecords, RecordError> {
    let mut scan = DiskScan::new(vm, disk);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;

    while offset < size {
        let len = (size - offset).min(CHUNK_BYTES as u64) as usize;
        read(&mut chunk[..len], offset).map_err(|source| RecordError::Read {
            vm: vm.into(),
            disk: disk.into(),
            offset,
            source,
        })?;
        for (i, record) in chunk[..len].chunks(RECORD_BYTES as usize).enumerate() {
            scan.take(record, offset + (i as u64) * RECORD_BYTES)?;
        }
        offset += len as u64;
    }
    Ok(DiskRecords {
        disk: disk.into(),
        count: scan.count,
        max_peer: scan.max_peer,
    })
}

/// The state of one disk's scan: counting records, or past the first zero record.
struct DiskScan<'a> {
    vm: &'a str,
    disk: &'a str,
    count: u64,
    max_peer: Option<u64>,
    first_zero: Option<u64>,
}

impl<'a> DiskScan<'a> {
    fn new(vm: &'a str, disk: &'a str) -> Self {
        DiskScan {
            vm,
            disk,
            count: 0,
            max_peer: None,
            first_zero: None,
        }
    }

    /// Takes the record (or the disk's short tail) at byte `at`.
    fn take(&mut self, record: &[u8], at: u64) -> Result<(), RecordError> {
        if let Some(zero_record) = self.first_zero {
            return match record.iter().position(|&b| b != 0) {
                None => Ok(()),
                Some(p) => Err(RecordError::Gap {
                    vm: self.vm.into(),
                    disk: self.disk.into(),
                    zero_record,
                    data_at: at + p as u64,
                }),
            };
        }

        if record.iter().all(|&b| b == 0) {
            self.first_zero = Some(self.count);
            return Ok(());
        }
        let peer = intact_record_peer(self.vm, self.disk, self.count, record).map_err(|why| {
            RecordError::Torn {
                vm: self.vm.into(),
                disk: self.disk.into(),
                index: self.count,
                why,
            }
        })?;
        self.max_peer = self.max_peer.max(Some(peer));
        self.count += 1;
        Ok(())
    }
}

/// The peer value of record `seq` when it is intact: whole, with 64 lines that are exactly
/// the line for (vm, disk, seq, its peer).
fn intact_record_peer(vm: &str, disk: &str, seq: u64, record: &[u8]) -> Result<u64, String> {
    if record.len() as u64 != RECORD_BYTES {
        return Err(format!("{} bytes at the end of the disk", record.len()));
    }
    let first = String::from_utf8_lossy(&record[..LINE_BYTES]);
    let peer = parse_peer(&first).ok_or_else(|| format!("line 0 is {:?}", first.trim_end()))?;

    let expected = record_line(vm, disk, seq, peer);
    for (i, line) in record.chunks(LINE_BYTES).enumerate() {
        if line != expected.as_bytes() {
            return Err(format!(
                "line {i} is {:?}, expected {:?}",
                String::from_utf8_lossy(line).trim_end(),
                expected.trim_end()
            ));
        }
    }
    Ok(peer)
}

/// The 10-digit number after ` peer=` in a record line.
fn parse_peer(line: &str) -> Option<u64> {
    let start = line.find(" peer=")? + " peer=".len();
    let digits = line.get(start..start + 10)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Check (b): in write order the counts never increase and differ by at most 1.
pub fn check_vm(records: &VmRecords) -> Result<(), RecordError> {
    let counts: Vec<u64> = records.disks.iter().map(|d| d.count).collect();
    let ordered = counts.windows(2).all(|w| w[0] >= w[1]);
    let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
    let close = spread <= 1;
    if ordered && close {
        Ok(())
    } else {
        Err(RecordError::Counts {
            vm: records.vm.clone(),
            counts,
        })
    }
}

/// Check (c): every peer value in the follower's records is below the leader's smallest
/// disk count, so each step the follower saw is complete in the leader's images.
pub fn check_cause(leader: &VmRecords, follower: &VmRecords) -> Result<(), RecordError> {
    let leader_min_count = leader.min_count();
    match follower.max_peer() {
        Some(peer) if peer >= leader_min_count => Err(RecordError::PeerAhead {
            leader: leader.vm.clone(),
            follower: follower.vm.clone(),
            peer,
            leader_min_count,
        }),
        _ => Ok(()),
    }
}

/// A reader over a raw image file (e.g. `qemu-img convert -U -O raw` output).
pub fn file_reader(file: &std::fs::File) -> impl FnMut(&mut [u8], u64) -> io::Result<()> + '_ {
    use std::os::unix::fs::FileExt;
    move |buf, offset| file.read_exact_at(buf, offset)
}

/// A reader over an in-memory disk, for tests that build images by hand.
pub fn slice_reader(bytes: &[u8]) -> impl FnMut(&mut [u8], u64) -> io::Result<()> + '_ {
    move |buf, offset| {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = bytes
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: u64 = 64 * RECORD_BYTES;

    /// A disk of `DISK` bytes with records 0..count (peer = seq + peer_offset) then zeros.
    fn disk_with(vm: &str, disk: &str, count: u64, peer_offset: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; DISK as usize];
        for n in 0..count {
            let at = (n * RECORD_BYTES) as usize;
            bytes[at..at + RECORD_BYTES as usize].copy_from_slice(&record_bytes(
                vm,
                disk,
                n,
                n + peer_offset,
            ));
        }
        bytes
    }

    fn scan(vm: &str, disk: &str, bytes: &[u8]) -> Result<DiskRecords, RecordError> {
        scan_disk(vm, disk, bytes.len() as u64, &mut slice_reader(bytes))
    }

    fn vm(name: &str, counts: &[u64], max_peer: Option<u64>) -> VmRecords {
        VmRecords {
            vm: name.into(),
            disks: counts
                .iter()
                .enumerate()
                .map(|(i, &count)| DiskRecords {
                    disk: format!("vd{i}"),
                    count,
                    max_peer,
                })
                .collect(),
        }
    }

    #[test]
    fn lines_are_64_bytes() {
        let line = record_line("lead", "vda", 7, 3);
        assert_eq!(line.len(), LINE_BYTES);
        assert!(line.starts_with("COSNAP vm=lead disk=vda seq=0000000007 peer=0000000003 "));
    }

    #[test]
    fn intact_prefix_is_counted_with_its_peers() {
        let bytes = disk_with("foll", "vda", 10, 2);
        let r = scan("foll", "vda", &bytes).unwrap();
        assert_eq!((r.count, r.max_peer), (10, Some(11)));
        let empty = scan("foll", "vda", &vec![0u8; DISK as usize]).unwrap();
        assert_eq!((empty.count, empty.max_peer), (0, None));
        let full = disk_with("foll", "vda", 64, 0);
        assert_eq!(scan("foll", "vda", &full).unwrap().count, 64);
    }

    #[test]
    fn torn_record_is_caught() {
        let mut bytes = disk_with("vm1", "vda", 6, 0);
        // Half of record 3 holds record 3's successor: a write that landed halfway.
        let at = (3 * RECORD_BYTES) as usize;
        bytes[at + 2048..at + 4096].copy_from_slice(&record_bytes("vm1", "vda", 4, 4)[..2048]);
        let err = scan("vm1", "vda", &bytes).unwrap_err();
        assert!(matches!(err, RecordError::Torn { index: 3, .. }), "{err}");
        assert!(err.to_string().contains("line 32"), "{err}");
    }

    #[test]
    fn half_zero_record_is_torn_not_the_end() {
        let mut bytes = disk_with("vm1", "vda", 4, 0);
        let at = (3 * RECORD_BYTES) as usize;
        bytes[at + 1024..at + 4096].fill(0);
        let err = scan("vm1", "vda", &bytes).unwrap_err();
        assert!(matches!(err, RecordError::Torn { index: 3, .. }), "{err}");
    }

    #[test]
    fn gap_is_caught() {
        let mut bytes = disk_with("vm1", "vda", 6, 0);
        let at = (2 * RECORD_BYTES) as usize;
        bytes[at..at + RECORD_BYTES as usize].fill(0);
        let err = scan("vm1", "vda", &bytes).unwrap_err();
        assert!(
            matches!(err, RecordError::Gap { zero_record: 2, data_at, .. } if data_at == 3 * RECORD_BYTES),
            "{err}"
        );
    }

    #[test]
    fn misplaced_or_foreign_records_are_caught() {
        let mut bytes = disk_with("vm1", "vda", 4, 0);
        let at = (2 * RECORD_BYTES) as usize;
        bytes[at..at + RECORD_BYTES as usize].copy_from_slice(&record_bytes("vm1", "vda", 1, 1));
        assert!(matches!(
            scan("vm1", "vda", &bytes).unwrap_err(),
            RecordError::Torn { index: 2, .. }
        ));
        let other_disk = disk_with("vm1", "vdb", 4, 0);
        assert!(matches!(
            scan("vm1", "vda", &other_disk).unwrap_err(),
            RecordError::Torn { index: 0, .. }
        ));
        let other_vm = disk_with("vm2", "vda", 4, 0);
        assert!(scan("vm1", "vda", &other_vm).is_err());
    }

    #[test]
    fn a_short_tail_must_be_zeros() {
        let mut bytes = disk_with("vm1", "vda", 2, 0);
        bytes.extend_from_slice(&[0u8; 100]);
        assert_eq!(scan("vm1", "vda", &bytes).unwrap().count, 2);
        let mut full = disk_with("vm1", "vda", 64, 0);
        full.extend_from_slice(b"x");
        assert!(matches!(
            scan("vm1", "vda", &full).unwrap_err(),
            RecordError::Torn { index: 64, .. }
        ));
    }

    #[test]
    fn reader_errors_name_the_disk() {
        let mut failing = |_: &mut [u8], _: u64| Err(io::Error::other("boom"));
        let err = scan_disk("vm1", "vda", DISK, &mut failing).unwrap_err();
        assert!(err.to_string().contains("vm1/vda"), "{err}");
    }

    #[test]
    fn disk_counts_of_one_vm() {
        check_vm(&vm("a", &[5, 5], None)).unwrap();
        check_vm(&vm("a", &[5, 4], None)).unwrap();
        check_vm(&vm("a", &[5, 5, 4], None)).unwrap();
        assert!(check_vm(&vm("a", &[5, 3], None)).is_err(), "2 apart");
        assert!(
            check_vm(&vm("a", &[4, 5], None)).is_err(),
            "later disk ahead"
        );
        assert!(
            check_vm(&vm("a", &[5, 4, 5], None)).is_err(),
            "out of order"
        );
    }

    #[test]
    fn follower_peer_must_be_below_the_leaders_count() {
        let leader = vm("lead", &[10, 9], None);
        check_cause(&leader, &vm("foll", &[3, 3], Some(8))).unwrap();
        check_cause(&leader, &vm("foll", &[0, 0], None)).unwrap();
        let err = check_cause(&leader, &vm("foll", &[4, 4], Some(9))).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::PeerAhead {
                    peer: 9,
                    leader_min_count: 9,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn whole_pipeline_on_synthetic_images() {
        let lead_a = disk_with("lead", "vda", 12, 0);
        let lead_b = disk_with("lead", "vdb", 11, 0);
        // The follower saw steps up to 10: complete in both of the leader's disks.
        let foll_a = disk_with("foll", "vda", 9, 2);
        let leader = VmRecords {
            vm: "lead".into(),
            disks: vec![
                scan("lead", "vda", &lead_a).unwrap(),
                scan("lead", "vdb", &lead_b).unwrap(),
            ],
        };
        let follower = VmRecords {
            vm: "foll".into(),
            disks: vec![scan("foll", "vda", &foll_a).unwrap()],
        };
        check_vm(&leader).unwrap();
        check_vm(&follower).unwrap();
        check_cause(&leader, &follower).unwrap();

        // Negative control: the leader frozen earlier than the follower.
        let early = VmRecords {
            vm: "lead".into(),
            disks: vec![
                scan("lead", "vda", &disk_with("lead", "vda", 10, 0)).unwrap(),
                scan("lead", "vdb", &disk_with("lead", "vdb", 10, 0)).unwrap(),
            ],
        };
        assert!(check_cause(&early, &follower).is_err());
    }
}
