//! How the process holds memory: weights on huge pages, freed buffers handed back. Hints to
//! the operating system only: contents never change, and where a hint is not available
//! (another OS, an older kernel, no free huge pages) nothing happens.

/// Size of an x86-64 / aarch64 transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// The whole huge pages inside `start..start + len`: (first address, length), or None.
fn huge_page_span(start: usize, len: usize) -> Option<(usize, usize)> {
    let first = start.checked_next_multiple_of(HUGE_PAGE)?;
    let end = start.checked_add(len)? / HUGE_PAGE * HUGE_PAGE;
    (end > first).then(|| (first, end - first))
}

/// `vec![value; len]` on huge pages from its first touch: the pages are advised (`MADV_HUGEPAGE`)
/// before `value` is written into them, so they arrive as huge pages without the copy that
/// collapsing written pages costs (BitNet 2B4T's shape: 1.2 s of a 6.4 s load).
pub fn huge_page_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    let spare = v.spare_capacity_mut();
    advise(spare.as_ptr() as usize, std::mem::size_of_val(spare), false);
    v.resize(len, value);
    v
}

/// Asks Linux to hold the whole 2 MiB pages inside `buf` as transparent huge pages, now
/// (`MADV_COLLAPSE`, Linux 6.1+; copies the 4 KiB pages into huge ones) and from then on
/// (`MADV_HUGEPAGE`). A kernel that streams weights touches a new 4 KiB page every 4 KiB,
/// each a TLB miss and a stop for the hardware prefetcher, which does not cross pages. On a
/// 2-core AMD EPYC (Zen 3, AVX2) VM, 2026-12-07: an f16 output layer (32002 x 1536) read from
/// memory, a plain read 16-20 -> 23-25 GB/s; decode, one model of each kind in one process,
/// alternating (medians of 3-4): 729M 34.9 -> 40.3 tok/s on one thread, 55.8 -> 59.6 on two,
/// BitNet 2B4T's shape 9.3 -> 10.0. Most of it is the output layer's: 729M's ternary
/// matrices (0.6-1.5 MB each) hold few whole huge pages, and making them huge as well (by
/// advising the pages around them) did not change its speed.
pub fn use_huge_pages<T>(buf: &[T]) {
    advise(buf.as_ptr() as usize, std::mem::size_of_val(buf), true);
}

fn advise(start: usize, len: usize, collapse: bool) {
    #[cfg(target_os = "linux")]
    if let Some((first, len)) = huge_page_span(start, len) {
        extern "C" {
            fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        const MADV_COLLAPSE: i32 = 25;
        // SAFETY: callers pass memory of a buffer they hold; both calls only change how its
        // pages are mapped, never what they hold, and fail harmlessly (EINVAL on kernels
        // without them, EAGAIN/ENOMEM without free huge pages).
        unsafe {
            madvise(first as *mut _, len, MADV_HUGEPAGE);
            if collapse {
                madvise(first as *mut _, len, MADV_COLLAPSE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len, collapse, huge_page_span);
}

/// Hands memory freed by a prompt's buffers (megabytes per token batch) back to the system.
/// glibc raises its mmap threshold after such frees and then keeps similar blocks in its heap,
/// so without this the resident size of a process that ran one long prompt stays above what
/// the model holds.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_span_is_the_whole_pages_inside() {
        const H: usize = HUGE_PAGE;
        assert_eq!(huge_page_span(0, 3 * H), Some((0, 3 * H)));
        assert_eq!(huge_page_span(1, 3 * H), Some((H, 2 * H)));
        assert_eq!(huge_page_span(H - 1, 2 * H + 1), Some((H, 2 * H)));
        assert_eq!(huge_page_span(1, 2 * H), Some((H, H)));
        assert_eq!(huge_page_span(1, 2 * H - 2), None);
        assert_eq!(huge_page_span(5 * H, 0), None);
        assert_eq!(huge_page_span(usize::MAX - 10, 5), None);
    }

    /// Bytes of `addr`'s mapping that Linux holds as huge pages (/proc/self/smaps).
    #[cfg(target_os = "linux")]
    fn huge_bytes_around(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (usize::from_str_radix(a, 16).unwrap_or(0), usize::from_str_radix(b, 16).unwrap_or(0));
                inside = (a..b).contains(&addr);
            } else if inside && line.starts_with("AnonHugePages:") {
                return line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024;
            }
        }
        0
    }

    #[test]
    fn huge_pages_keep_the_contents_and_are_used() {
        // Over glibc's largest mmap threshold (32 MiB): each buffer is a mapping of its own, not
        // heap pages that other tests' threads touch meanwhile.
        const LEN: usize = 40 << 20;
        let buf: Vec<u8> = (0..LEN).map(|i| (i * 31 % 251) as u8).collect();
        use_huge_pages(&buf);
        assert!(buf.iter().enumerate().all(|(i, &b)| b == (i * 31 % 251) as u8));
        let fresh = huge_page_vec(LEN, 7u8);
        #[cfg(target_os = "linux")]
        {
            // Where the kernel offers transparent huge pages (not "[never]"), both buffers get
            // whole ones.
            let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
            if thp.contains('[') && !thp.contains("[never]") {
                assert!(huge_bytes_around(buf.as_ptr() as usize + LEN / 2) >= 8 * HUGE_PAGE, "{thp}");
                assert!(huge_bytes_around(fresh.as_ptr() as usize + LEN / 2) >= 8 * HUGE_PAGE, "{thp}");
            }
        }
    }
}
