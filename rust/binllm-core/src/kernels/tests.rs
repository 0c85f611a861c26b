//! Every usable SIMD backend against the scalar reference, bit-exact, on seeded random
//! shapes (odd ones included) and every format. The scalar reference itself is checked
//! against a direct sum over unpacked codes.

use super::*;
use crate::formats::{quantize_activations, PackedMatrix, ScaleKind, FORMATS};

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

fn random_case(format: WeightFormat, n: usize, k: usize, m: usize, seed: &mut u64) -> (PackedMatrix, QuantizedActivations, Vec<i8>) {
    let codes: Vec<i8> = (0..n * k)
        .map(|_| if format.is_ternary() { (lcg(seed) % 3) as i8 - 1 } else if lcg(seed) % 2 == 0 { -1 } else { 1 })
        .collect();
    let w = PackedMatrix::pack(format, &codes, n, k, ScaleKind::PerTensor(1.0)).unwrap();
    // Include extreme activations: a full-scale row hits -128 and 127.
    let x: Vec<f32> = (0..m * k).map(|_| (lcg(seed) % 20001) as f32 / 10000.0 - 1.0).collect();
    let act = quantize_activations(&x, m, k, w.padded_k());
    (w, act, codes)
}

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
        assert_eq!(Backend::Avx2.is_available(), std::arch::is_x86_feature_detected!("avx2"));
        assert_eq!(Backend::Avx512Vnni.is_available(), std::arch::is_x86_feature_detected!("avx512vnni"));
    }
    assert!(!Backend::Simd128.is_available() || cfg!(target_arch = "wasm32"));
}

#[test]
fn unknown_backend_names_are_errors() {
    assert!(Backend::from_name("avx9000").is_err());
    assert_eq!(Backend::from_name("AVX2").unwrap(), Backend::Avx2);
}
