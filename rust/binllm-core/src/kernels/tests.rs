//! Every usable SIMD backend against the scalar reference, bit-exact, on seeded random
//! shapes (odd ones included) and every format. The scalar reference itself is checked
//! against a direct sum over unpacked codes.

use super::*;
use crate::formats::{PackedMatrix, ScaleKind, FORMATS};

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

fn random_case(format: WeightFormat, n: usize, k: usize, m: usize, seed: &mut u64) -> (PackedMatrix, QuantizedActivations, Vec<i8>) {
    let codes: Vec<i8> = (0..n * k)
        .map(|_| {
            if format.is_ternary() {
                (lcg(seed) % 3) as i8 - 1
            } else if lcg(seed).is_multiple_of(2) {
                -1
            } else {
                1
            }
        })
        .collect();
    let w = PackedMatrix::pack(format, &codes, n, k, ScaleKind::PerTensor(1.0)).unwrap();
    // Include extreme activations: a full-scale row hits -128 and 127.
    let x: Vec<f32> = (0..m * k).map(|_| (lcg(seed) % 20001) as f32 / 10000.0 - 1.0).collect();
    let act = quantize_activations(&x, m, k, w.padded_k());
    (w, act, codes)
}

/// Shapes across every walk: GEMV, small GEMM tiles, AMX's streaming walk (4 to 16 activation
/// rows, several stripes of 32 weight rows and a partial one) and its whole-row walk (17+).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 256, 1),
    (3, 17, 3),
    (17, 255, 1),
    (9, 320, 2),
    (16, 512, 4),
    (33, 1023, 17),
    (8, 1537, 5),
    (61, 2560, 1),
    (13, 700, 8),
    (70, 1100, 6),
    (64, 512, 16),
    (45, 2600, 9),
];

#[test]
fn scalar_matches_direct_sum_over_codes() {
    let mut seed = 11;
    for spec in &FORMATS {
        for &(n, k, m) in SHAPES {
            let (w, act, codes) = random_case(spec.format, n, k, m, &mut seed);
            let got = w.integer_sums(Backend::Scalar, &act).unwrap();
            for r in 0..n {
                for i in 0..m {
                    let want: i32 = (0..k).map(|j| codes[r * k + j] as i32 * act.q[i * act.padded_k + j] as i32).sum();
                    assert_eq!(got[r * m + i], want, "{} n={n} k={k} m={m}", spec.name);
                }
            }
        }
    }
}

#[test]
fn every_backend_is_bit_exact_with_scalar() {
    let mut seed = 12345;
    let backends = available_backends();
    assert!(backends.contains(&Backend::Scalar));
    for spec in &FORMATS {
        for &(n, k, m) in SHAPES {
            let (w, act, _) = random_case(spec.format, n, k, m, &mut seed);
            let reference = w.integer_sums(Backend::Scalar, &act).unwrap();
            for &b in &backends {
                let got = w.integer_sums(b, &act).unwrap();
                assert_eq!(got, reference, "backend {} format {} n={n} k={k} m={m}", b.name(), spec.name);
            }
        }
    }
}

#[test]
fn x86_backends_are_detected_where_the_cpu_has_them() {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = ["avx2", "fma", "f16c"].iter().all(|f| match *f {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            _ => std::arch::is_x86_feature_detected!("f16c"),
        });
        assert_eq!(Backend::Avx2.is_available(), avx2);
        assert!(!Backend::Amx.is_available() || Backend::Avx512Vnni.is_available());
        assert_eq!(Backend::Avx512Vnni.is_available(), std::arch::is_x86_feature_detected!("avx512vnni"));
    }
    assert!(!Backend::Simd128.is_available() || cfg!(target_arch = "wasm32"));
}

#[test]
fn unknown_backend_names_are_errors() {
    assert!(Backend::from_name("avx9000").is_err());
    assert_eq!(Backend::from_name("AVX2").unwrap(), Backend::Avx2);
}

/// A matrix with random per-group scales of `group` weights (scales do not enter the sums).
fn grouped_case(format: WeightFormat, n: usize, k: usize, m: usize, group: usize, seed: &mut u64) -> (PackedMatrix, QuantizedActivations, Vec<i8>) {
    let (w, act, codes) = random_case(format, n, k, m, seed);
    let scales = (0..n * k.div_ceil(group)).map(|i| 0.5 + i as f32).collect();
    let w = PackedMatrix::from_packed(format, n, k, w.packed_data().to_vec(), ScaleKind::PerGroup { group, scales }).unwrap();
    (w, act, codes)
}

const GROUPED_SHAPES: &[(usize, usize, usize)] = &[(1, 1, 1), (3, 17, 2), (9, 700, 1), (17, 1023, 3), (33, 2560, 1), (8, 1537, 5), (13, 2049, 1)];

#[test]
fn grouped_scalar_matches_direct_sums_over_each_group() {
    let mut seed = 21;
    for spec in &FORMATS {
        for mult in [1, 2, 3] {
            let group = spec.block_weights * mult;
            for &(n, k, m) in GROUPED_SHAPES {
                let (w, act, codes) = grouped_case(spec.format, n, k, m, group, &mut seed);
                let groups = k.div_ceil(group);
                let got = w.integer_sums(Backend::Scalar, &act).unwrap();
                assert_eq!(got.len(), n * groups * m);
                for r in 0..n {
                    for g in 0..groups {
                        for i in 0..m {
                            let cols = g * group..((g + 1) * group).min(k);
                            let want: i32 = cols.map(|j| codes[r * k + j] as i32 * act.q[i * act.padded_k + j] as i32).sum();
                            assert_eq!(got[(r * groups + g) * m + i], want, "{} n={n} k={k} m={m} group={group}", spec.name);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn grouped_sums_are_bit_exact_with_scalar_on_every_backend() {
    let mut seed = 22;
    for spec in &FORMATS {
        for mult in [1, 2, 5] {
            let group = spec.block_weights * mult;
            // The last two are large enough to be split across threads (`rows_per_task`).
            for &(n, k, m) in GROUPED_SHAPES.iter().chain(&[(61, 2560, 1), (7, 6912, 1), (12, 3000, 4), (2001, 2560, 1), (1001, 2600, 3)]) {
                let (w, act, _) = grouped_case(spec.format, n, k, m, group, &mut seed);
                let reference = w.integer_sums(Backend::Scalar, &act).unwrap();
                for b in available_backends() {
                    assert_eq!(w.integer_sums(b, &act).unwrap(), reference, "backend {} {} n={n} k={k} m={m} group={group}", b.name(), spec.name);
                }
            }
        }
    }
}

#[test]
fn grouped_matmul_is_the_per_group_formula() {
    let (n, k, m, group) = (5, 1100, 3, 512);
    let mut seed = 23;
    let (w, _, codes) = grouped_case(WeightFormat::Ternary2, n, k, m, group, &mut seed);
    let x: Vec<f32> = (0..m * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
    let act = w.quantize_input(&x, m);
    let y = w.matmul(&x, m).unwrap();
    for r in 0..n {
        for i in 0..m {
            let want: f64 =
                (0..k).map(|j| codes[r * k + j] as f64 * w.scale_at(r, j) as f64 * act.q[i * act.padded_k + j] as f64).sum::<f64>() / act.scales[i] as f64;
            assert!((y[i * n + r] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0), "row {r} act {i}: {} vs {want}", y[i * n + r]);
        }
    }
}

/// `BINLLM_THREADS=1 cargo test -p binllm-core --release -- --ignored --nocapture grouped_gemv_speed`:
/// grouped t2 GEMV (group 256) against the per-tensor one on the same shape, same run; once
/// with the matrix in cache (the same matrix again and again) and once from DRAM (a rotation
/// of copies larger than the last-level cache, as in decoding a whole model).
#[test]
#[ignore]
fn grouped_gemv_speed() {
    let mut seed = 24;
    for &(n, k) in &[(6912, 2560), (1536, 576), (2560, 6912)] {
        let (w, act, _) = random_case(WeightFormat::Ternary2, n, k, 1, &mut seed);
        let copies = (256 << 20) / w.packed_data().len() + 1;
        let plain: Vec<PackedMatrix> = (0..copies).map(|_| w.clone()).collect();
        let grouped: Vec<PackedMatrix> = (0..copies)
            .map(|_| {
                let scales = (0..n * k.div_ceil(256)).map(|i| 1.0 + (i % 7) as f32).collect();
                PackedMatrix::from_packed(WeightFormat::Ternary2, n, k, w.packed_data().to_vec(), ScaleKind::PerGroup { group: 256, scales }).unwrap()
            })
            .collect();
        for b in available_backends().into_iter().filter(|b| *b != Backend::Scalar) {
            let time = |mats: &[PackedMatrix]| {
                let reps = (4_000_000_000 / (n * k)).max(40);
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    let mut out = Vec::new();
                    for i in 0..reps {
                        mats[i % mats.len()].integer_sums_into(b, &act, &mut out).unwrap();
                        std::hint::black_box(&out);
                    }
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                best
            };
            for (label, count) in [("cache", 1), ("DRAM", copies)] {
                let (p, g) = (time(&plain[..count]), time(&grouped[..count]));
                println!(
                    "{:>11} {n}x{k} {label:>5}: per-tensor {:6.1} us, grouped(256) {:6.1} us: {:3.0}% of per-tensor speed",
                    b.name(),
                    p * 1e6,
                    g * 1e6,
                    100.0 * p / g
                );
            }
        }
    }
}
