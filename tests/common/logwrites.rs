//! The write log QEMU's `blklogwrites` block driver keeps of a disk (the
//! format of Linux's dm-log-writes, which xfstests replays to test file
//! systems against power loss): a super block, then per request an entry
//! sector and the data written. The super block's entry count moves only
//! when a flush completes, so at any moment it marks what the disk has made
//! durable; replaying that many entries onto the disk's first contents
//! rebuilds the disk a power cut at that moment leaves.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const MAGIC: u64 = 0x006a_7366_7773_6872;
const FLUSH: u64 = 1;
const DISCARD: u64 = 1 << 2;

fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Entries the log counts as of its last flush, and its sector size.
pub fn durable_entries(log: &Path) -> std::io::Result<(u64, u64)> {
    let mut sb = [0u8; 32];
    let mut f = File::open(log)?;
    if f.read(&mut sb)? < 28 {
        return Ok((0, 512));
    }
    if u64le(&sb, 0) != MAGIC {
        return Err(std::io::Error::other("not a write log"));
    }
    let sectorsize = u32::from_le_bytes(sb[24..28].try_into().unwrap()) as u64;
    Ok((u64le(&sb, 16), sectorsize))
}

/// What replaying did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub writes: u64,
    pub flushes: u64,
}

/// Apply the first `entries` entries of `log` to `image` (a copy of the
/// disk as it was when logging began).
pub fn replay(log: &Path, image: &Path, entries: u64) -> std::io::Result<Replayed> {
    let (_, ss) = durable_entries(log)?;
    let mut l = File::open(log)?;
    let mut img = std::fs::OpenOptions::new().write(true).open(image)?;
    let mut at = 1u64; // entries begin after the super block's sector
    let mut done = Replayed::default();
    let mut head = vec![0u8; ss as usize];
    for _ in 0..entries {
        l.seek(SeekFrom::Start(at * ss))?;
        l.read_exact(&mut head)?;
        let (sector, nr, flags) = (u64le(&head, 0), u64le(&head, 8), u64le(&head, 16));
        at += 1;
        if flags & FLUSH != 0 {
            done.flushes += 1;
        }
        if flags & DISCARD != 0 || nr == 0 {
            continue;
        }
        let mut data = vec![0u8; (nr * ss) as usize];
        l.read_exact(&mut data)?;
        img.seek(SeekFrom::Start(sector * ss))?;
        img.write_all(&data)?;
        at += nr;
        done.writes += 1;
    }
    img.sync_all()?;
    Ok(done)
}
