//! Float matrix products for the parts of a model that stay in floating point (embeddings,
//! output layer, float models), and for ternary weights with float activations (the
//! reference mode without activation quantization). Rows are split over the thread pool;
//! the dot product is compiled twice, for AVX2+FMA and for the baseline, and chosen at run time.

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        let (x, y) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        for j in 0..16 {
            acc[j] = if fma { x[j].mul_add(y[j], acc[j]) } else { acc[j] + x[j] * y[j] };
        }
    }
    let mut tail = 0f32;
    for i in chunks * 16..a.len() {
        tail += a[i] * b[i];
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, true)
}

fn dot_baseline(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, false)
}

/// The float dot product for this CPU.
pub fn dot_fn() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS_FMA: OnceLock<bool> = OnceLock::new();
        if *HAS_FMA.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            // SAFETY: the CPU was checked for AVX2 and FMA just above.
            return |a, b| unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_baseline
}

/// `y[i * n + r] = row(r) . x[i]` for n weight rows and m activation rows of length k.
/// `row(r, scratch)` returns row r: borrowed for f32 weights, decoded into `scratch` for
/// packed ones. Rows are split over the thread pool.
pub fn gemm_rows<'w, F>(n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32], row: F)
where
    F: for<'s> Fn(usize, &'s mut Vec<f32>) -> RowRef<'w, 's> + Sync,
{
    let dot = dot_fn();
    let mut out = vec![0f32; n * m];
    let rows_per_task = (n / (crate::threads::num_threads() * 4)).max(16);
    crate::threads::for_each_chunk(&mut out, rows_per_task * m, |chunk, part| {
        let mut scratch = Vec::new();
        for (j, o) in part.chunks_mut(m).enumerate() {
            let r = chunk * rows_per_task + j;
            let w: &[f32] = match row(r, &mut scratch) {
                RowRef::Borrowed(w) => w,
                RowRef::Scratch(w) => w,
            };
            for (i, v) in o.iter_mut().enumerate() {
                *v = dot(&w[..k], &x[i * k..(i + 1) * k]);
            }
        }
    });
    for r in 0..n {
        for i in 0..m {
            y[i * n + r] = out[r * m + i];
        }
    }
}

/// A weight row handed to `gemm_rows`: borrowed from the weights or decoded into scratch.
pub enum RowRef<'w, 's> {
    Borrowed(&'w [f32]),
    Scratch(&'s [f32]),
}

/// `Y = X W^T` for a float weight matrix `w` (n x k), x (m x k), y (m x n).
pub fn gemm_f32(w: &[f32], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    debug_assert!(w.len() == n * k && x.len() == m * k && y.len() == m * n);
    gemm_rows(n, k, x, m, y, |r, _| RowRef::Borrowed(&w[r * k..(r + 1) * k]));
}
