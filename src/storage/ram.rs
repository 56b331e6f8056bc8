//! A RAM disk shared by every core. Words are atomics with relaxed ordering:
//! concurrent writes to one block from two queues may interleave (NVMe makes
//! no promise there either) but there is no data race in the Rust sense.
//!
//! The memory is mapped and faulted in at start (on huge pages where the
//! kernel has them): a page fault on first touch costs more than the I/O.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const WORD: usize = 8;

pub struct RamDisk {
    ptr: *mut AtomicU64,
    words: usize,
}

// SAFETY: the mapping is only accessed through atomics; it is unmapped once,
// in Drop, when no reference is left.
unsafe impl Send for RamDisk {}
unsafe impl Sync for RamDisk {}

impl RamDisk {
    /// `size` must be a multiple of 8.
    pub fn new(size: u64) -> Result<RamDisk, String> {
        let len = size as usize;
        // SAFETY: a fresh anonymous private mapping; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(WORD),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "ram:{size}: cannot map memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: advice on our own mapping; failures only cost speed.
        unsafe {
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
        }
        let disk = RamDisk {
            ptr: p as *mut AtomicU64,
            words: len / WORD,
        };
        // Fault every page in now (MADV_POPULATE_WRITE where the kernel has it).
        const MADV_POPULATE_WRITE: i32 = 23;
        // SAFETY: as above.
        if unsafe { libc::madvise(p, len, MADV_POPULATE_WRITE) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(format!("ram:{size}: cannot fault in the memory: {e}"));
            }
            // Older kernels: touch one word per page.
            let page = 4096 / WORD;
            for w in disk.all().iter().step_by(page) {
                w.store(0, Relaxed);
            }
        }
        Ok(disk)
    }

    fn all(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds `words` zero-initialised AtomicU64s for
        // the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
    }

    pub fn len(&self) -> u64 {
        (self.words * WORD) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    fn range(&self, offset: u64, len: usize) -> &[AtomicU64] {
        let start = offset as usize / WORD;
        &self.all()[start..start + len / WORD]
    }

    /// Where bytes `offset..offset + len` are, for a system call that copies
    /// them (the kernel is not bound by Rust's aliasing rules; Rust code
    /// reads the disk only through atomics).
    pub fn address(&self, offset: u64, len: usize) -> *const u8 {
        let end = (offset as usize).checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.words * WORD),
            "RAM disk range"
        );
        // SAFETY: inside the mapping (checked above).
        unsafe { (self.ptr as *const u8).add(offset as usize) }
    }

    /// Offsets and lengths are multiples of the block size (512 or 4096).
    pub fn read(&self, offset: u64, out: &mut [u8]) {
        for (w, o) in self
            .range(offset, out.len())
            .iter()
            .zip(out.chunks_exact_mut(WORD))
        {
            o.copy_from_slice(&w.load(Relaxed).to_ne_bytes());
        }
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        for (w, d) in self
            .range(offset, data.len())
            .iter()
            .zip(data.chunks_exact(WORD))
        {
            w.store(u64::from_ne_bytes(d.try_into().unwrap()), Relaxed);
        }
    }

    pub fn zero(&self, offset: u64, len: u64) {
        for w in self.range(offset, len as usize) {
            w.store(0, Relaxed);
        }
    }
}

impl Drop for RamDisk {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, (self.words * WORD).max(WORD));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_zero() {
        let r = RamDisk::new(8192).unwrap();
        let data: Vec<u8> = (0..4096).map(|i| i as u8).collect();
        r.write(4096, &data);
        let mut out = vec![0u8; 4096];
        r.read(4096, &mut out);
        assert_eq!(out, data);
        r.read(0, &mut out);
        assert!(out.iter().all(|&b| b == 0));
        r.zero(4096, 512);
        r.read(4096, &mut out);
        assert!(out[..512].iter().all(|&b| b == 0));
        assert_eq!(&out[512..], &data[512..]);
    }
}
