//! Integer GEMV/GEMM kernels over the packed formats, one set per backend, and the run-time
//! choice between them.
//!
//! Every kernel computes exact integer sums `out[r * m + i] = sum_k code[r, k] * x[i, k]` for a
//! run of packed weight rows and `m` rows of int8 activations (zero-padded to whole blocks).
//! Float scales are applied by the caller (`PackedMatrix::matmul_into`), so every backend can
//! be checked bit-exact against `scalar`, which is the reference and is never deleted.
//!
//! Matrices with per-group scales need one sum per group of whole blocks (`gemm_i32_grouped`):
//! x86 GEMV walks each row tile group by group with the per-tensor GEMV loop (`GroupedGemvKernel`);
//! everything else copies a task's rows of one group together and runs the plain kernel on them,
//! so every backend's grouped sums come from its tested kernel.
//!
//! The backend is chosen once from the CPU's features (best first); `BINLLM_BACKEND=name`
//! forces one, and naming one the CPU lacks is an error, never a silent fallback.

use crate::error::{Error, Result};
use crate::formats::WeightFormat;
use std::sync::OnceLock;

/// Format ids for the SIMD kernels' const generics, and planes per 64-byte block (`formats`).
pub(crate) const T2: u8 = 0;
pub(crate) const T16: u8 = 1;
pub(crate) const B1: u8 = 2;

#[allow(dead_code)] // not every target's kernels use both
pub(crate) const fn planes(f: u8) -> usize {
    match f {
        T2 => 4,
        T16 => 5,
        _ => 8,
    }
}

#[allow(dead_code)]
pub(crate) const fn block_weights(f: u8) -> usize {
    planes(f) * 64
}

/// The tile walk and entry points shared by the 128-bit kernels (NEON, SIMD128): GEMV in
/// tiles of 4 weight rows, GEMM in tiles of 2 weight rows x 4 activation rows, remainders one at
/// a time. The invoking module provides `tile::<R, C, F>(w, row_bytes, x, kp) -> [[i32; C]; R]`
/// (unsigned sums) and `signed_sum::<F>(unsigned, x_sum)`, plus the format constants.
#[allow(unused_macros)]
macro_rules! kernels_128 {
    ($label:literal, $t2:ident, $t16:ident, $b1:ident) => {
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn run_tile<const R: usize, const C: usize, const F: u8>(
            w: &[u8],
            row_bytes: usize,
            x: &[i8],
            x_sums: &[i32],
            m: usize,
            kp: usize,
            out: &mut [i32],
            r0: usize,
            i0: usize,
        ) {
            let sums = tile::<R, C, F>(w.as_ptr().add(r0 * row_bytes), row_bytes, x.as_ptr().add(i0 * kp), kp);
            for r in 0..R {
                for c in 0..C {
                    out[(r0 + r) * m + i0 + c] = signed_sum::<F>(sums[r][c], x_sums[i0 + c]);
                }
            }
        }

        #[allow(clippy::too_many_arguments)]
        unsafe fn gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
            let mut r = 0;
            if m == 1 {
                while r + GEMV_ROWS <= n_rows {
                    run_tile::<GEMV_ROWS, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
                    r += GEMV_ROWS;
                }
                while r < n_rows {
                    run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, 0);
                    r += 1;
                }
                return;
            }
            while r < n_rows {
                let two_rows = r + 2 <= n_rows;
                let mut i = 0;
                while i + 4 <= m {
                    if two_rows {
                        run_tile::<2, 4, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                    } else {
                        run_tile::<1, 4, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                    }
                    i += 4;
                }
                while i < m {
                    if two_rows {
                        run_tile::<2, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                    } else {
                        run_tile::<1, 1, F>(w, row_bytes, x, x_sums, m, kp, out, r, i);
                    }
                    i += 1;
                }
                r += if two_rows { 2 } else { 1 };
            }
        }

        #[doc = concat!($label, " kernel for `t2` (see module docs).\n\n# Safety\nThe lengths `GemmKernel` documents, which `gemm_i32` checks.")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $t2(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
            gemm::<T2>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
        }
        #[doc = concat!($label, " kernel for `t1.6` (see module docs).\n\n# Safety\nThe lengths `GemmKernel` documents, which `gemm_i32` checks.")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $t16(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
            gemm::<T16>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
        }
        #[doc = concat!($label, " kernel for `b1` (see module docs).\n\n# Safety\nThe lengths `GemmKernel` documents, which `gemm_i32` checks.")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $b1(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
            gemm::<B1>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
        }
    };
}

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod bandwidth;

/// One cache line of bytes (`line_buffer`).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct CacheLine([u8; 64]);

/// A zeroed buffer of at least `len` bytes starting on a cache line, for kernels whose 64-byte
/// loads and stores must not straddle two lines: with `Vec`'s 16-byte alignment the AMX
/// streaming walk ran 2.5-3x slower in some processes than in others (6912 x 2560 t2, 8 rows:
/// 2.0-2.4 ms against 0.5-0.8), by where the allocator put its buffers, and a batch's f16
/// output layer 20% slower (`float::cache_aligned`).
pub(crate) fn line_buffer(len: usize) -> Vec<CacheLine> {
    vec![CacheLine([0; 64]); len.div_ceil(64)]
}
pub mod float;
pub mod matmul;
pub mod q6k;
pub mod scalar;
#[cfg(target_arch = "wasm32")]
pub mod wasm32;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use matmul::{quantize_activations, quantize_row, round_half_even, QuantizedActivations};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Scalar,
    Avx2,
    /// AVX-512 BW without VNNI (maddubs + madd).
    Avx512,
    /// AVX-512 with VNNI (vpdpbusd).
    Avx512Vnni,
    /// Intel AMX tiles (tdpbusd) for several activation rows; AVX-512 VNNI for one.
    Amx,
    Neon,
    Simd128,
}

/// Every backend binllm knows, best last.
pub const ALL_BACKENDS: [Backend; 7] = [Backend::Scalar, Backend::Simd128, Backend::Neon, Backend::Avx2, Backend::Avx512, Backend::Avx512Vnni, Backend::Amx];

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Avx512Vnni => "avx512vnni",
            Backend::Amx => "amx",
            Backend::Neon => "neon",
            Backend::Simd128 => "simd128",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        ALL_BACKENDS.iter().copied().find(|b| b.name() == name.trim().to_ascii_lowercase()).ok_or_else(|| {
            let known: Vec<_> = ALL_BACKENDS.iter().map(|b| b.name()).collect();
            Error::Backend(format!("unknown backend '{name}'; known backends: {}", known.join(", ")))
        })
    }

    /// Whether this CPU (and this build) can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                // The float dots of this backend use FMA and F16C too (every AVX2 CPU has them).
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                Backend::Avx2.is_available() && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => Backend::Avx512.is_available() && std::arch::is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "x86_64")]
            Backend::Amx => Backend::Avx512Vnni.is_available() && x86::amx::available(),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Backend::Simd128 => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl Backend {
    /// Whether the backend runs 512-bit x86 code (AVX-512 F and BW with AVX2, FMA and F16C):
    /// the float dots, attention and the bandwidth probe follow the integer kernels' backend,
    /// so `BINLLM_BACKEND` decides for all of them. CPU features are read only in
    /// `is_available` (and AMX's own check).
    pub fn uses_avx512(self) -> bool {
        matches!(self, Backend::Avx512 | Backend::Avx512Vnni | Backend::Amx)
    }

    /// Whether the backend runs at least AVX2 code (with FMA and F16C on x86).
    pub fn uses_avx2(self) -> bool {
        self == Backend::Avx2 || self.uses_avx512()
    }
}

/// The backend every kernel family follows: `active_backend`, or scalar when it cannot be had
/// (the error itself is reported by the integer kernels, which return `Result`).
pub fn dispatch_backend() -> Backend {
    active_backend().unwrap_or(Backend::Scalar)
}

/// Backends usable here, best last.
pub fn available_backends() -> Vec<Backend> {
    ALL_BACKENDS.iter().copied().filter(|b| b.is_available()).collect()
}

/// The backend in use: `BINLLM_BACKEND` if set (an error if unusable here), else the best.
pub fn active_backend() -> Result<Backend> {
    static CHOICE: OnceLock<std::result::Result<Backend, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| match std::env::var("BINLLM_BACKEND") {
            Ok(name) if !name.trim().is_empty() => {
                let b = Backend::from_name(&name).map_err(|e| e.to_string())?;
                if b.is_available() {
                    Ok(b)
                } else {
                    let here: Vec<_> = available_backends().iter().map(|b| b.name()).collect();
                    Err(format!("BINLLM_BACKEND={name} asks for a backend this CPU or build cannot run; usable here: {}", here.join(", ")))
                }
            }
            _ => Ok(*available_backends().last().unwrap_or(&Backend::Scalar)),
        })
        .clone()
        .map_err(Error::Backend)
}

/// Signature shared by every backend's kernel: `w` holds `n_rows` packed rows of `row_bytes`,
/// `x` holds `m` rows of `kp` int8 activations with their sums in `x_sums`; writes
/// `out[r * m + i]` for `r < n_rows`, `i < m`.
///
/// Unsafe: SIMD variants need their CPU features, and every variant trusts the lengths above,
/// which `gemm_i32` checks before calling.
pub type GemmKernel = unsafe fn(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]);

/// GEMV over scale groups: `w` holds `n_rows` rows of `row_bytes`, each cut into groups of
/// `group_bytes` (the last may be shorter); `x` is one row of int8 activations padded to the
/// row's length and `group_sums[g]` its sum over group g; writes `out[r * groups + g]`.
///
/// Unsafe for the same reasons as `GemmKernel`; `gemm_i32_grouped` checks the lengths.
pub type GroupedGemvKernel = unsafe fn(w: &[u8], n_rows: usize, row_bytes: usize, group_bytes: usize, x: &[i8], group_sums: &[i32], out: &mut [i32]);

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn grouped_gemv_for(backend: Backend, format: WeightFormat) -> Option<GroupedGemvKernel> {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => x86::avx2::grouped_gemv(format),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => x86::avx512::grouped_gemv(format, false),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Vnni | Backend::Amx => x86::avx512::grouped_gemv(format, true),
        _ => None,
    }
}

fn kernel_for(backend: Backend, format: WeightFormat) -> GemmKernel {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => x86::avx2::kernel(format),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => x86::avx512::kernel(format, false),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Vnni => x86::avx512::kernel(format, true),
        #[cfg(target_arch = "x86_64")]
        Backend::Amx => x86::amx::kernel(format),
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => aarch64::neon::kernel(format),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Backend::Simd128 => wasm32::simd128::kernel(format),
        _ => scalar::kernel(format),
    }
}

/// Work (weight bytes x activation rows) below which a task is not worth handing to another
/// thread. A decode step reads its weights from memory, not from cache: a 1536x1536 t2 GEMV
/// (0.6 MB) takes about 45 us on one core reading 13 GB/s, while handing a task to a spinning
/// worker costs about a microsecond. At 512 KiB (tuned on cache-resident weights) every q, k,
/// v and o GEMV of a 729M model, and k and v of 2B4T, ran on one thread: two-thread decode
/// rose 6-16% with 64 KiB (2026-12-06, the two values alternating in one process).
const MIN_TASK_WORK: usize = 64 << 10;

/// Rows handed to one task, a multiple of 8 (the SIMD tiles). Small products are one task,
/// which `for_each_chunk` runs on the calling thread without waking the pool; larger ones
/// get 1 to 4 tasks per thread, as many as keep each task above `MIN_TASK_WORK`.
pub(crate) fn rows_per_task(n_rows: usize, row_bytes: usize, m: usize) -> usize {
    let threads = crate::threads::num_threads().max(1);
    let work = n_rows.saturating_mul(row_bytes).saturating_mul(m);
    if threads == 1 || work < 2 * MIN_TASK_WORK {
        return n_rows;
    }
    let tasks = threads * (work / (threads * MIN_TASK_WORK)).clamp(1, 4);
    n_rows.div_ceil(tasks).div_ceil(8) * 8
}

/// The checks every kernel entry makes before trusting its operands: a usable backend, and
/// `w`, `act` and an output of `sums_per_row * m` sums a row that agree in size.
#[allow(clippy::too_many_arguments)]
fn check_operands(
    backend: Backend,
    format: WeightFormat,
    w: &[u8],
    n_rows: usize,
    row_bytes: usize,
    act: &QuantizedActivations,
    out_len: usize,
    sums_per_row: usize,
) -> Result<()> {
    if !backend.is_available() {
        crate::bail!(Backend, "backend {} is not usable on this CPU or build", backend.name());
    }
    let (m, kp) = (act.m, act.padded_k);
    if row_bytes != format.row_bytes(kp)
        || w.len() != n_rows * row_bytes
        || act.q.len() != m * kp
        || act.sums.len() != m
        || out_len != n_rows * sums_per_row * m
    {
        crate::bail!(InvalidArgument, "kernel operands disagree in size");
    }
    Ok(())
}

/// Runs `format`'s kernel on `backend` over all rows, split across the thread pool.
pub fn gemm_i32(backend: Backend, format: WeightFormat, w: &[u8], n_rows: usize, row_bytes: usize, act: &QuantizedActivations, out: &mut [i32]) -> Result<()> {
    check_operands(backend, format, w, n_rows, row_bytes, act, out.len(), 1)?;
    let (m, kp) = (act.m, act.padded_k);
    if n_rows == 0 || m == 0 {
        return Ok(());
    }
    let kernel = kernel_for(backend, format);
    let rows = rows_per_task(n_rows, row_bytes, m);
    crate::threads::for_each_chunk(out, rows * m, |chunk, part| {
        let first = chunk * rows;
        let count = part.len() / m;
        let wpart = &w[first * row_bytes..(first + count) * row_bytes];
        // SAFETY: `backend.is_available()` was checked above, and every length the kernel
        // trusts (`wpart`, `act.q`, `act.sums`, `part`) was checked to match its shape.
        unsafe { kernel(wpart, count, row_bytes, &act.q, &act.sums, m, kp, part) }
    });
    Ok(())
}

/// As `gemm_i32`, one sum per group of `group` weights (a multiple of the format's block; the
/// last group of a row may be shorter): `out[(r * groups + i_group) * m + i]`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_i32_grouped(
    backend: Backend,
    format: WeightFormat,
    w: &[u8],
    n_rows: usize,
    row_bytes: usize,
    group: usize,
    act: &QuantizedActivations,
    out: &mut [i32],
) -> Result<()> {
    let bw = format.spec().block_weights;
    if group == 0 || !group.is_multiple_of(bw) {
        crate::bail!(InvalidArgument, "group size {group} is not a positive multiple of {bw}");
    }
    let (m, kp) = (act.m, act.padded_k);
    let groups = kp.div_ceil(group);
    check_operands(backend, format, w, n_rows, row_bytes, act, out.len(), groups)?;
    if n_rows == 0 || m == 0 {
        return Ok(());
    }
    let group_bytes = group / bw * crate::formats::BLOCK_BYTES;
    let span = |g: usize| (g * group, ((g + 1) * group).min(kp));
    // group_sums[i * groups + g]: activation row i summed over group g.
    let group_sums: Vec<i32> = (0..m)
        .flat_map(|i| (0..groups).map(move |g| (i, g)))
        .map(|(i, g)| {
            let (s, e) = span(g);
            act.q[i * kp + s..i * kp + e].iter().map(|&v| v as i32).sum()
        })
        .collect();
    if m == 1 {
        if let Some(kernel) = grouped_gemv_for(backend, format) {
            let rows = rows_per_task(n_rows, row_bytes, 1);
            crate::threads::for_each_chunk(out, rows * groups, |chunk, part| {
                let first = chunk * rows;
                let count = part.len() / groups;
                let wpart = &w[first * row_bytes..(first + count) * row_bytes];
                // SAFETY: the backend is available and every length was checked above.
                unsafe { kernel(wpart, count, row_bytes, group_bytes, &act.q, &group_sums, part) }
            });
            return Ok(());
        }
    }
    // Each group's activations contiguous ([m][group length]) with their sums.
    let x_groups: Vec<(Vec<i8>, Vec<i32>)> = (0..groups)
        .map(|g| {
            let (s, e) = span(g);
            let x = (0..m).flat_map(|i| act.q[i * kp + s..i * kp + e].iter().copied()).collect();
            (x, (0..m).map(|i| group_sums[i * groups + g]).collect())
        })
        .collect();
    let kernel = kernel_for(backend, format);
    let rows = rows_per_task(n_rows, row_bytes, m);
    crate::threads::for_each_chunk(out, rows * groups * m, |chunk, part| {
        let first = chunk * rows;
        let count = part.len() / (groups * m);
        let mut w_group = vec![0u8; count * group_bytes];
        let mut sums = vec![0i32; count * m];
        for (g, (x, x_sums)) in x_groups.iter().enumerate() {
            let (start, bytes) = (g * group_bytes, group_bytes.min(row_bytes - g * group_bytes));
            for r in 0..count {
                let src = (first + r) * row_bytes + start;
                w_group[r * bytes..(r + 1) * bytes].copy_from_slice(&w[src..src + bytes]);
            }
            // SAFETY: the backend is available; `w_group` holds `count` rows of `bytes`, which
            // is `format.row_bytes` of the group's length, and `x` / `x_sums` / `sums` match.
            unsafe { kernel(&w_group[..count * bytes], count, bytes, x, x_sums, m, span(g).1 - span(g).0, &mut sums) }
            for r in 0..count {
                part[(r * groups + g) * m..(r * groups + g + 1) * m].copy_from_slice(&sums[r * m..(r + 1) * m]);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests;
