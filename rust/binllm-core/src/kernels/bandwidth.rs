//! A streaming-read probe: sums every byte of a buffer as fast as the cores can load it.
//!
//! A weight-streaming kernel (GEMV) can go no faster than reading its packed bytes, so the
//! probe's GB/s is the ceiling benchmarks compare kernels against, measured in the same run:
//! over a buffer much larger than the last-level cache it is the memory read bandwidth; over
//! a buffer of the weight matrix's size, read again and again, it is the cache-resident limit.
//! The sum is returned so the compiler cannot drop the reads; it is exact (u64).

/// Sum of all bytes of `buf` on the calling thread, with the widest SIMD of the backend in use.
pub fn sum_bytes(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let backend = crate::kernels::dispatch_backend();
        if backend.uses_avx512() {
            // SAFETY: the backend is available, so the CPU has AVX-512 BW.
            return unsafe { x86::sum_bytes_avx512(buf) };
        }
        if backend.uses_avx2() {
            // SAFETY: the backend is available, so the CPU has AVX2.
            return unsafe { x86::sum_bytes_avx2(buf) };
        }
    }
    sum_bytes_scalar(buf)
}

/// Sum of all bytes of `buf`, read as `streams` interleaved sequential streams (the buffer cut
/// into `streams` equal parts read side by side, as a GEMV tile walks several rows), each
/// prefetched 2 KiB ahead. A core's read bandwidth depends on the pattern: one stream leans on
/// the hardware prefetcher alone, several streams with software prefetch keep more lines in
/// flight (on some machines 30% more). Benchmarks take the best pattern as the limit.
pub fn sum_bytes_streams(buf: &[u8], streams: usize) -> u64 {
    let streams = streams.max(1);
    let part = buf.len() / streams / 64 * 64;
    if streams == 1 || part == 0 {
        return sum_bytes(buf);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernels::dispatch_backend().uses_avx512() {
            // SAFETY: the backend is available, so the CPU has AVX-512 BW; parts lie within `buf`.
            let head = unsafe { x86::sum_streams_avx512(buf, streams, part) };
            return head + sum_bytes_scalar(&buf[streams * part..]);
        }
    }
    (0..streams).map(|s| sum_bytes(&buf[s * part..(s + 1) * part])).sum::<u64>() + sum_bytes_scalar(&buf[streams * part..])
}

/// `sum_bytes_streams` split over the thread pool: each worker reads its own contiguous part
/// as `streams` interleaved streams.
pub fn sum_bytes_streams_parallel(buf: &[u8], streams: usize) -> u64 {
    let threads = crate::threads::num_threads().max(1);
    let part = buf.len().div_ceil(threads).div_ceil(64) * 64;
    if threads == 1 || part < MIN_PART_BYTES {
        return sum_bytes_streams(buf, streams);
    }
    let mut partial = vec![0u64; buf.len().div_ceil(part)];
    crate::threads::for_each_chunk(&mut partial, 1, |i, slot| {
        let end = ((i + 1) * part).min(buf.len());
        slot[0] = sum_bytes_streams(&buf[i * part..end], streams);
    });
    partial.iter().sum()
}

/// Reads smaller than this per thread stay on the calling thread: waking the pool costs more
/// than splitting them saves (the kernels follow the same rule, `kernels::rows_per_task`).
const MIN_PART_BYTES: usize = 512 << 10;

/// Sum of all bytes of `buf`, split into one contiguous part per worker thread.
pub fn sum_bytes_parallel(buf: &[u8]) -> u64 {
    let threads = crate::threads::num_threads().max(1);
    // Parts are whole cache lines, so no line is read by two threads.
    let part = buf.len().div_ceil(threads).div_ceil(64) * 64;
    if threads == 1 || part < MIN_PART_BYTES {
        return sum_bytes(buf);
    }
    let mut partial = vec![0u64; buf.len().div_ceil(part)];
    crate::threads::for_each_chunk(&mut partial, 1, |i, slot| {
        let end = ((i + 1) * part).min(buf.len());
        slot[0] = sum_bytes(&buf[i * part..end]);
    });
    partial.iter().sum()
}

/// The portable twin the SIMD versions are tested against.
pub fn sum_bytes_scalar(buf: &[u8]) -> u64 {
    buf.iter().map(|&b| b as u64).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// Four independent accumulators, one 64-byte line each per step, so loads never wait
    /// on the adds. `vpsadbw` against zero sums 8 bytes into each 64-bit lane.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn sum_bytes_avx512(buf: &[u8]) -> u64 {
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_si512(); 4];
        let p = buf.as_ptr();
        let lines = buf.len() / 64;
        let mut i = 0;
        while i + 4 <= lines {
            for (a, acc) in acc.iter_mut().enumerate() {
                let v = _mm512_loadu_si512(p.add((i + a) * 64) as *const _);
                *acc = _mm512_add_epi64(*acc, _mm512_sad_epu8(v, zero));
            }
            i += 4;
        }
        while i < lines {
            let v = _mm512_loadu_si512(p.add(i * 64) as *const _);
            acc[0] = _mm512_add_epi64(acc[0], _mm512_sad_epu8(v, zero));
            i += 1;
        }
        let total = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        _mm512_reduce_add_epi64(total) as u64 + super::sum_bytes_scalar(&buf[lines * 64..])
    }

    /// `streams` parts of `part` bytes each (a multiple of 64), one line of each per step.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn sum_streams_avx512(buf: &[u8], streams: usize, part: usize) -> u64 {
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_si512();
        let p = buf.as_ptr();
        let mut off = 0;
        while off < part {
            for s in 0..streams {
                let q = p.add(s * part + off);
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(2048) as *const i8);
                acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_loadu_si512(q as *const _), zero));
            }
            off += 64;
        }
        _mm512_reduce_add_epi64(acc) as u64
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sum_bytes_avx2(buf: &[u8]) -> u64 {
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_si256(); 4];
        let p = buf.as_ptr();
        let chunks = buf.len() / 32;
        let mut i = 0;
        while i + 4 <= chunks {
            for (a, acc) in acc.iter_mut().enumerate() {
                let v = _mm256_loadu_si256(p.add((i + a) * 32) as *const _);
                *acc = _mm256_add_epi64(*acc, _mm256_sad_epu8(v, zero));
            }
            i += 4;
        }
        while i < chunks {
            let v = _mm256_loadu_si256(p.add(i * 32) as *const _);
            acc[0] = _mm256_add_epi64(acc[0], _mm256_sad_epu8(v, zero));
            i += 1;
        }
        let total = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
        let mut lanes = [0u64; 4];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, total);
        lanes.iter().sum::<u64>() + super::sum_bytes_scalar(&buf[chunks * 32..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_sums_exactly_on_odd_lengths() {
        let buf: Vec<u8> = (0..100_003u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        for len in [0, 1, 17, 63, 64, 65, 255, 256, 1023, 4097, 100_003] {
            let part = &buf[..len];
            let want = sum_bytes_scalar(part);
            assert_eq!(sum_bytes(part), want, "len {len}");
            assert_eq!(sum_bytes_parallel(part), want, "len {len}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    assert_eq!(unsafe { x86::sum_bytes_avx2(part) }, want, "avx2 len {len}");
                }
            }
        }
        for streams in [1, 2, 3, 8] {
            for len in [0, 1, 17, 64, 191, 1023, 100_003] {
                assert_eq!(sum_bytes_streams(&buf[..len], streams), sum_bytes_scalar(&buf[..len]), "streams {streams} len {len}");
                assert_eq!(sum_bytes_streams_parallel(&buf[..len], streams), sum_bytes_scalar(&buf[..len]), "streams {streams} len {len}");
            }
        }
        assert_eq!(sum_bytes(&[255u8; 1000]), 255_000);
        // Long enough to be split across the pool when it has several threads.
        let long: Vec<u8> = (0..3_000_017u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        assert_eq!(sum_bytes_parallel(&long), sum_bytes_scalar(&long));
    }
}
