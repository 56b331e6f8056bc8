//! A RAM disk shared by every core. Words are atomics with relaxed ordering:
//! concurrent writes to one block from two queues may interleave (NVMe makes
//! no promise there either) but there is no data race in the Rust sense.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct RamDisk {
    words: Box<[AtomicU64]>,
}

const WORD: usize = 8;

impl RamDisk {
    /// `size` must be a multiple of 8. Pages are allocated zeroed and lazily
    /// by the kernel, so a large RAM disk costs memory only where written.
    pub fn new(size: u64) -> RamDisk {
        let n = (size as usize) / WORD;
        let mut v: Vec<AtomicU64> = Vec::new();
        // calloc-backed zeroed allocation: AtomicU64 of zero is all-zero bytes.
        let layout = std::alloc::Layout::array::<AtomicU64>(n).expect("ram disk size");
        if n > 0 {
            // SAFETY: the layout is non-zero-sized; zeroed memory is a valid
            // AtomicU64 array; ownership passes to the Vec with matching layout.
            unsafe {
                let p = std::alloc::alloc_zeroed(layout) as *mut AtomicU64;
                if p.is_null() {
                    std::alloc::handle_alloc_error(layout);
                }
                v = Vec::from_raw_parts(p, n, n);
            }
        }
        RamDisk {
            words: v.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> u64 {
        (self.words.len() * WORD) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn range(&self, offset: u64, len: usize) -> &[AtomicU64] {
        let start = offset as usize / WORD;
        &self.words[start..start + len / WORD]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_zero() {
        let r = RamDisk::new(8192);
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
