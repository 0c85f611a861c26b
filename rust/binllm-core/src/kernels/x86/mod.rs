//! x86-64 kernels. Both files share the plane layout of `formats`: a block's byte j holds
//! weight j + 64p of plane p, so plane p of 64 bytes meets 64 consecutive activations.
//! Codes are decoded to unsigned values (t2, t1.6: code + 1; b1: bit) and multiplied with
//! int8 activations by `u8 x i8` instructions; the signed sum is recovered as
//! `sum(u * x) - sum(x)` (ternary) or `2 * sum(u * x) - sum(x)` (binary).

pub mod amx;
pub mod avx2;
pub mod avx512;

pub(crate) use crate::kernels::{block_weights, planes, B1, T16, T2};

/// How far GEMV weight tiles prefetch ahead: 8 KiB (`float::PREFETCH_BYTES`, the f16 dots'
/// distance) rounded up to whole tiles of `tile_bytes`, so each prefetch asks for the line the
/// same row of a later tile will read (a row is a tile of the one-row GEMVs). Measured on Zen
/// 5: 8-16 KiB all reach 75-95% of the streaming read bandwidth from DRAM; more evicts L1
/// lines before use when the matrix sits in L3. A division: compute it once per kernel call,
/// not per block.
#[inline(always)]
pub(crate) fn prefetch_distance(tile_bytes: usize) -> usize {
    crate::kernels::float::PREFETCH_BYTES.div_ceil(tile_bytes).max(1) * tile_bytes
}

/// Turns the unsigned sum into the signed one.
#[inline(always)]
pub(crate) fn signed_sum(f: u8, unsigned: i32, x_sum: i32) -> i32 {
    if f == B1 {
        2 * unsigned - x_sum
    } else {
        unsigned - x_sum
    }
}

/// Cases the shared kernels-vs-scalar matrix does not reach, against the scalar reference on
/// every x86 backend this CPU has: packed bytes of every value (`from_packed` takes any,
/// t2's unused field 3 included), activations at -128 and 127, every activation count up to
/// 13 (all tile remainders), and rows long enough to cross t1.6's GEMV segment fold and the
/// GEMM K-chunks.
#[cfg(test)]
mod tests {
    use crate::formats::{PackedMatrix, ScaleKind, FORMATS};
    use crate::kernels::QuantizedActivations;
    use crate::kernels::{Backend, ALL_BACKENDS};

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn activations(m: usize, kp: usize, fill: impl FnMut(usize) -> i8) -> QuantizedActivations {
        let q: Vec<i8> = (0..m * kp).map(fill).collect();
        let sums = q.chunks_exact(kp).map(|row| row.iter().map(|&v| v as i32).sum()).collect();
        QuantizedActivations { q, scales: vec![1.0; m], sums, m, padded_k: kp }
    }

    fn check(w: &PackedMatrix, act: &QuantizedActivations, what: &str) {
        let want = w.integer_sums(Backend::Scalar, act).unwrap();
        for b in ALL_BACKENDS.into_iter().filter(|b| matches!(b, Backend::Avx2 | Backend::Avx512 | Backend::Avx512Vnni | Backend::Amx) && b.is_available()) {
            assert_eq!(w.integer_sums(b, act).unwrap(), want, "{} {what}", b.name());
        }
    }

    #[test]
    fn any_packed_bytes_and_extreme_activations_match_scalar() {
        let mut seed = 99;
        for spec in &FORMATS {
            for &(n, k) in &[(1, 1), (13, 700), (9, 2560), (7, 6912)] {
                let row_bytes = spec.format.row_bytes(k);
                let data: Vec<u8> = (0..n * row_bytes).map(|_| lcg(&mut seed) as u8).collect();
                let w = PackedMatrix::from_packed(spec.format, n, k, data, ScaleKind::PerTensor(1.0)).unwrap();
                let kp = w.padded_k();
                for m in 1..=13 {
                    let random = activations(m, kp, |_| lcg(&mut seed) as u8 as i8);
                    check(&w, &random, &format!("{} ({n}, {k}) m={m} random", spec.name));
                }
                for (value, name) in [(-128i8, "all -128"), (127, "all 127")] {
                    for m in [1, 2, 3, 5] {
                        check(&w, &activations(m, kp, |_| value), &format!("{} ({n}, {k}) m={m} {name}", spec.name));
                    }
                }
            }
            // Saturated weights too: every byte 0xFF with every activation -128.
            let (n, k) = (5, 1500);
            let w = PackedMatrix::from_packed(spec.format, n, k, vec![0xFF; n * spec.format.row_bytes(k)], ScaleKind::PerTensor(1.0)).unwrap();
            for m in [1, 4, 7] {
                check(&w, &activations(m, w.padded_k(), |_| -128), &format!("{} all 0xFF m={m}", spec.name));
            }
        }
    }

    /// Prompts long enough for AVX2's decoded GEMM (t2 and b1 past `DECODED_MIN_X_BYTES` of
    /// activations; t1.6 from 5 rows): blocks of decoded rows with a remainder (GEMM_ROWS),
    /// K-chunks with a remainder, every activation-tile remainder, and saturated weights with
    /// extreme activations over whole rows (the i16 widening bound).
    #[test]
    fn prompts_through_the_decoded_gemm_match_scalar() {
        let mut seed = 7;
        for spec in &FORMATS {
            let (n, k) = (67, 6000);
            let data: Vec<u8> = (0..n * spec.format.row_bytes(k)).map(|_| lcg(&mut seed) as u8).collect();
            let w = PackedMatrix::from_packed(spec.format, n, k, data, ScaleKind::PerTensor(1.0)).unwrap();
            let kp = w.padded_k();
            for m in [5, 7, 44, 45, 46, 47] {
                let act = activations(m, kp, |_| lcg(&mut seed) as u8 as i8);
                check(&w, &act, &format!("{} ({n}, {k}) m={m} random", spec.name));
            }
            let w = PackedMatrix::from_packed(spec.format, 3, k, vec![0xFF; 3 * spec.format.row_bytes(k)], ScaleKind::PerTensor(1.0)).unwrap();
            for (value, name) in [(-128i8, "all -128"), (127, "all 127")] {
                check(&w, &activations(48, kp, |_| value), &format!("{} all 0xFF m=48 {name}", spec.name));
            }
        }
    }

    #[test]
    fn rows_longer_than_a_t16_segment_match_scalar() {
        // Byte 0xFF is five trits of 2; with activations of -128 a lane of the z trick reaches
        // 256 * 1700 * 20 * 2 * 128 > 2^31 unless segments are folded.
        let spec = &FORMATS[1];
        let (n, k) = (3, 1700 * spec.block_weights);
        let mut seed = 5;
        let mut data = vec![0xFF; n * spec.format.row_bytes(k)];
        data[..64].iter_mut().for_each(|b| *b = lcg(&mut seed) as u8);
        let w = PackedMatrix::from_packed(spec.format, n, k, data, ScaleKind::PerTensor(1.0)).unwrap();
        for m in [1, 2, 3, 4] {
            check(&w, &activations(m, w.padded_k(), |_| -128), &format!("m={m}"));
        }
    }
}
