//! Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later Xeons) for products with
//! several activation rows: batched decode (one row per sequence) and prompts.
//!
//! AMX multiplies 16 x 64 u8 tiles by 64 x 16 i8 tiles into 16 x 16 i32 sums in one
//! instruction (`tdpbusd`, 16384 multiply-adds), 16 times the work of an AVX-512 VNNI
//! instruction. The packed weights are decoded to unsigned codes (t2, t1.6: code + 1; b1: bit;
//! the AVX-512 `decode_row` layout); activations are laid out once per call in the tiles'
//! "VNNI" order (4 consecutive k of one row side by side). Sums are exact integers, so results
//! equal every other backend's.
//!
//! By the number of activation rows m:
//! - m > 16 (prompts, `gemm`): 32 weight rows are decoded whole into a buffer that stays in
//!   L2 while every pair of activation tiles runs over them, so decoding is paid once for
//!   many rows.
//! - `STREAM_MIN_ROWS` <= m <= 16 (batched decode, `gemm_streaming`): one activation tile, so
//!   decoding must keep up with memory. Each 64-byte block of 32 weight rows is decoded into
//!   an 8 KiB buffer in L1 and multiplied at once, plane by plane; the next stripe of rows is
//!   prefetched in address order (32 rows read side by side are more streams than the
//!   hardware prefetchers follow), and two sets of tiles alternate so that loads overlap
//!   products (tiles are not renamed: a load into a tile waits for the product reading it).
//!   6912 x 2560 t2 from memory on one Xeon core (2026-12-06, same process, alternating):
//!   0.48-0.61 ms at 2 to 16 rows, against AVX-512 VNNI's 0.83 at 2, 1.0-1.1 at 4, 1.4-1.5
//!   at 8 and the whole-row walk's 2.1-2.3 at 16. A decode step of 8 sequences at BitNet
//!   2B4T's shape, one thread: 437 -> 284 ms.
//! - One row (a single sequence's decode) stays on AVX-512 VNNI, whose GEMV reads the packed
//!   weights at memory speed.
//!
//! Linux hands AMX's tile state to a process only after it asks (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); [`available`] asks once and reports whether it may.

use super::{block_weights, planes, signed_sum, B1, T16, T2};
use crate::formats::WeightFormat;
use crate::kernels::line_buffer;
use crate::kernels::GemmKernel;
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Tile rows (weight rows per tile, and k / 4 per activation tile).
const ROWS: usize = 16;
/// Bytes per tile row: 64 k of one weight row, or 4 k of 16 activation rows.
const COLSB: usize = 64;
/// Activation rows above which `gemm` (decode 32 rows whole, then every activation tile) is
/// used: it pays decoding once for all tiles (at 64 rows 3.0-3.6 ms against VNNI's 7.6-8.4
/// for 6912 x 2560 t2 on one Xeon core, 2026-12-06).
const MIN_ROWS: usize = 16;

/// Activation rows from which `gemm_streaming` is used (module docs): from 2 rows it beats
/// AVX-512 VNNI, whose GEMV stays best for one.
const STREAM_MIN_ROWS: usize = 2;

/// Whether this CPU has AMX-INT8 and this process may use it (asked once).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("xsave"))
        {
            return false;
        }
        // CPUID.(EAX=7, ECX=0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        // CPUID leaf 7 exists on every CPU with AVX-512.
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
            return false;
        }
        request_tile_permission() && os_enables_tiles()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    extern "C" {
        fn syscall(number: i64, ...) -> i64;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: arch_prctl with these arguments only changes which XSAVE features the process
    // may use; it fails cleanly (non-zero) where the kernel does not support AMX.
    unsafe { syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves tile state across switches.
fn os_enables_tiles() -> bool {
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        _xgetbv(0)
    }
    // SAFETY: `available` checked the CPU for XSAVE first.
    let x = unsafe { xcr0() };
    x & (3 << 17) == 3 << 17
}

/// The tile configuration: palette 1, eight tiles of 16 rows of 64 bytes: tmm0 and tmm1 sums
/// of two tiles of weight rows; tmm2, tmm3 (and tmm5, tmm6) those weight rows, tmm4 (tmm7)
/// activations.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(COLSB as u16).to_le_bytes());
            c[48 + t] = ROWS as u8;
        }
        TileConfig(c)
    }
}

/// `out[r * m + i]` = signed integer sum of weight row r and activation row i (`GemmKernel`).
///
/// # Safety
/// [`available`] is true, and the lengths `GemmKernel` documents hold.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn gemm<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    let bw = block_weights(F);
    debug_assert!(planes(F) * 64 == bw && kp.is_multiple_of(bw) && row_bytes == kp / bw * 64);
    let groups = m.div_ceil(ROWS); // activation tiles of up to 16 rows
    let ktiles = kp / COLSB;
    // Activations in tile order: [group][k tile][k / 4 within the tile][row in group][k % 4].
    let mut xb_lines = line_buffer(groups * ktiles * ROWS * COLSB);
    // SAFETY: the lines are plain bytes, `groups * ktiles * ROWS * COLSB` of them.
    let xb = std::slice::from_raw_parts_mut(xb_lines.as_mut_ptr() as *mut i8, groups * ktiles * ROWS * COLSB);
    for i in 0..m {
        let (g, c) = (i / ROWS, i % ROWS);
        let row = &x[i * kp..(i + 1) * kp];
        for t in 0..ktiles {
            let tile = &mut xb[(g * ktiles + t) * ROWS * COLSB..];
            for r in 0..ROWS {
                tile[r * COLSB + 4 * c..r * COLSB + 4 * c + 4].copy_from_slice(&row[t * COLSB + 4 * r..t * COLSB + 4 * r + 4]);
            }
        }
    }
    // Two tiles of weight rows (32 rows) decoded whole, `stride` bytes apart: a row plus one
    // line, so the rows of a tile do not all fall in the same few cache sets. 32 rows of
    // 6912 codes are 220 KiB, in L2.
    let stride = kp + COLSB;
    let mut code_lines = line_buffer(2 * ROWS * stride);
    // SAFETY: as `xb`.
    let codes = std::slice::from_raw_parts_mut(code_lines.as_mut_ptr() as *mut u8, 2 * ROWS * stride);
    // Sums of a pair of activation tiles: [group of the pair][weight tile][16 rows][16 rows].
    let mut sums = [0i32; 2 * 2 * ROWS * ROWS];
    let cfg = TileConfig::new();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    for r0 in (0..n_rows).step_by(2 * ROWS) {
        let rows = (2 * ROWS).min(n_rows - r0);
        for r in 0..2 * ROWS {
            let dst = codes.as_mut_ptr().add(r * stride);
            if r < rows {
                super::avx512::decode_row::<F>(w.as_ptr().add((r0 + r) * row_bytes), row_bytes, dst);
            } else {
                std::ptr::write_bytes(dst, 0, kp);
            }
        }
        let (a0, a1) = (codes.as_ptr(), codes.as_ptr().add(ROWS * stride));
        let mut g = 0;
        while g < groups {
            let pair = (groups - g).min(2);
            let b0 = xb.as_ptr().add(g * ktiles * ROWS * COLSB);
            if pair == 2 {
                tiles_two_groups(a0, a1, stride, b0, b0.add(ktiles * ROWS * COLSB), ktiles, sums.as_mut_ptr());
            } else {
                tiles_one_group(a0, a1, stride, b0, ktiles, sums.as_mut_ptr());
            }
            for r in 0..rows {
                for gi in 0..pair {
                    for c in 0..ROWS.min(m - (g + gi) * ROWS) {
                        let i = (g + gi) * ROWS + c;
                        let at = ((gi * 2 + r / ROWS) * ROWS + r % ROWS) * ROWS + c;
                        out[(r0 + r) * m + i] = signed_sum(F, sums[at], x_sums[i]);
                    }
                }
            }
            g += pair;
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// `out[r * m + i]` for at most 16 activation rows: the streaming walk (module docs).
///
/// # Safety
/// [`available`] is true, `m <= ROWS`, and the lengths `GemmKernel` documents hold.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn gemm_streaming<const F: u8>(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
    let pl = planes(F);
    let blocks = row_bytes / 64;
    let ktiles = kp / COLSB;
    debug_assert!(m <= ROWS && ktiles == blocks * pl);
    // Activations in tile order: [k tile][k / 4 within the tile][row][k % 4].
    let mut xb_lines = line_buffer(ktiles * ROWS * COLSB);
    // SAFETY: the lines are plain bytes, `ktiles * ROWS * COLSB` of them.
    let xb = std::slice::from_raw_parts_mut(xb_lines.as_mut_ptr() as *mut i8, ktiles * ROWS * COLSB);
    for i in 0..m {
        let row = &x[i * kp..(i + 1) * kp];
        for t in 0..ktiles {
            let tile = &mut xb[t * ROWS * COLSB..];
            for r in 0..ROWS {
                tile[r * COLSB + 4 * i..r * COLSB + 4 * i + 4].copy_from_slice(&row[t * COLSB + 4 * r..t * COLSB + 4 * r + 4]);
            }
        }
    }
    // Codes of one block of 32 rows, [plane][row][64], in two buffers taken in turn.
    let buffer = pl * 2 * ROWS * COLSB;
    let mut code_lines = line_buffer(2 * buffer);
    // SAFETY: as `xb`.
    let codes = std::slice::from_raw_parts_mut(code_lines.as_mut_ptr() as *mut u8, 2 * buffer);
    let mut sums = [0i32; 2 * ROWS * ROWS];
    let cfg = TileConfig::new();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let stripe = 2 * ROWS * row_bytes;
    for r0 in (0..n_rows).step_by(2 * ROWS) {
        let rows = (2 * ROWS).min(n_rows - r0);
        if rows < 2 * ROWS {
            // Rows past the matrix stay zero codes in both buffers.
            codes.fill(0);
        }
        let first = w.as_ptr().add(r0 * row_bytes);
        asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        for b in 0..blocks {
            let buf = codes.as_mut_ptr().add((b % 2) * buffer);
            for r in 0..rows {
                // One line of the next stripe per row and block: the whole stripe, in order,
                // into L2 (past the matrix's end the hint is harmless; into L1 measured 5-10%
                // slower).
                crate::kernels::float::prefetch_line(first.wrapping_add(stripe + (b * 2 * ROWS + r) * 64) as *const i8);
                super::avx512::decode_block::<F>(first.add(r * row_bytes + b * 64), buf.add(r * COLSB), 2 * ROWS * COLSB);
            }
            let mut p = 0;
            while p < pl {
                let a = buf.add(p * 2 * ROWS * COLSB);
                let xt = xb.as_ptr().add((b * pl + p) * ROWS * COLSB);
                if p + 2 <= pl {
                    // Two planes on two sets of tiles: the second set's loads overlap the
                    // first set's products (tiles are not renamed).
                    asm!(
                        "tileloadd tmm2, [{a0} + {s}]",
                        "tileloadd tmm3, [{a1} + {s}]",
                        "tileloadd tmm4, [{b0} + {s}]",
                        "tdpbusd tmm0, tmm2, tmm4",
                        "tdpbusd tmm1, tmm3, tmm4",
                        "tileloadd tmm5, [{c0} + {s}]",
                        "tileloadd tmm6, [{c1} + {s}]",
                        "tileloadd tmm7, [{b1} + {s}]",
                        "tdpbusd tmm0, tmm5, tmm7",
                        "tdpbusd tmm1, tmm6, tmm7",
                        a0 = in(reg) a,
                        a1 = in(reg) a.add(ROWS * COLSB),
                        c0 = in(reg) a.add(2 * ROWS * COLSB),
                        c1 = in(reg) a.add(3 * ROWS * COLSB),
                        b0 = in(reg) xt,
                        b1 = in(reg) xt.add(ROWS * COLSB),
                        s = in(reg) COLSB,
                        options(nostack, readonly)
                    );
                    p += 2;
                } else {
                    asm!(
                        "tileloadd tmm2, [{a0} + {s}]",
                        "tileloadd tmm3, [{a1} + {s}]",
                        "tileloadd tmm4, [{b} + {s}]",
                        "tdpbusd tmm0, tmm2, tmm4",
                        "tdpbusd tmm1, tmm3, tmm4",
                        a0 = in(reg) a,
                        a1 = in(reg) a.add(ROWS * COLSB),
                        b = in(reg) xt,
                        s = in(reg) COLSB,
                        options(nostack, readonly)
                    );
                    p += 1;
                }
            }
        }
        asm!(
            "tilestored [{p0} + {s}], tmm0",
            "tilestored [{p1} + {s}], tmm1",
            p0 = in(reg) sums.as_mut_ptr(), p1 = in(reg) sums.as_mut_ptr().add(ROWS * ROWS), s = in(reg) ROWS * 4,
            options(nostack)
        );
        for r in 0..rows {
            for i in 0..m {
                out[(r0 + r) * m + i] = signed_sum(F, sums[r * ROWS + i], x_sums[i]);
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Sums of two tiles of decoded weight rows (`a0`, `a1`, rows `stride` apart) with two
/// activation tiles (`b0`, `b1`, each `ktiles` tiles of 16 x 64 bytes) over the whole row,
/// into `sums` ([group][weight tile][16][16] i32). The weight tiles are loaded once for both
/// activation tiles: 4 loads per 4 products.
#[inline]
unsafe fn tiles_two_groups(a0: *const u8, a1: *const u8, stride: usize, b0: *const i8, b1: *const i8, ktiles: usize, sums: *mut i32) {
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
    for t in 0..ktiles {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}]",
            "tileloadd tmm5, [{a1} + {sa}]",
            "tileloadd tmm6, [{b0} + {sb}]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm5, tmm6",
            "tileloadd tmm7, [{b1} + {sb}]",
            "tdpbusd tmm2, tmm4, tmm7",
            "tdpbusd tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(t * COLSB),
            a1 = in(reg) a1.add(t * COLSB),
            b0 = in(reg) b0.add(t * ROWS * COLSB),
            b1 = in(reg) b1.add(t * ROWS * COLSB),
            sa = in(reg) stride, sb = in(reg) COLSB,
            options(nostack, readonly)
        );
    }
    let tile = ROWS * ROWS;
    asm!(
        "tilestored [{p0} + {s}], tmm0",
        "tilestored [{p1} + {s}], tmm1",
        "tilestored [{p2} + {s}], tmm2",
        "tilestored [{p3} + {s}], tmm3",
        p0 = in(reg) sums, p1 = in(reg) sums.add(tile), p2 = in(reg) sums.add(2 * tile), p3 = in(reg) sums.add(3 * tile),
        s = in(reg) ROWS * 4,
        options(nostack)
    );
}

/// `tiles_two_groups` for one activation tile (`sums` [weight tile][16][16]). Tiles are not
/// renamed: a load into a tile waits for the products still reading it, so even and odd k
/// tiles use two sets (tmm4-6, tmm1/3/7) and the next loads overlap the current products.
#[inline]
unsafe fn tiles_one_group(a0: *const u8, a1: *const u8, stride: usize, b: *const i8, ktiles: usize, sums: *mut i32) {
    asm!("tilezero tmm0", "tilezero tmm2", options(nostack, nomem));
    let mut t = 0;
    while t < ktiles {
        if t + 2 <= ktiles {
            asm!(
                "tileloadd tmm6, [{b} + {sb}]",
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm5, [{a1} + {sa}]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm2, tmm5, tmm6",
                "tileloadd tmm7, [{b2} + {sb}]",
                "tileloadd tmm1, [{c0} + {sa}]",
                "tileloadd tmm3, [{c1} + {sa}]",
                "tdpbusd tmm0, tmm1, tmm7",
                "tdpbusd tmm2, tmm3, tmm7",
                a0 = in(reg) a0.add(t * COLSB),
                a1 = in(reg) a1.add(t * COLSB),
                c0 = in(reg) a0.add((t + 1) * COLSB),
                c1 = in(reg) a1.add((t + 1) * COLSB),
                b = in(reg) b.add(t * ROWS * COLSB),
                b2 = in(reg) b.add((t + 1) * ROWS * COLSB),
                sa = in(reg) stride, sb = in(reg) COLSB,
                options(nostack, readonly)
            );
            t += 2;
        } else {
            asm!(
                "tileloadd tmm6, [{b} + {sb}]",
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm5, [{a1} + {sa}]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm2, tmm5, tmm6",
                a0 = in(reg) a0.add(t * COLSB),
                a1 = in(reg) a1.add(t * COLSB),
                b = in(reg) b.add(t * ROWS * COLSB),
                sa = in(reg) stride, sb = in(reg) COLSB,
                options(nostack, readonly)
            );
            t += 1;
        }
    }
    asm!(
        "tilestored [{p0} + {s}], tmm0",
        "tilestored [{p1} + {s}], tmm2",
        p0 = in(reg) sums, p1 = in(reg) sums.add(ROWS * ROWS), s = in(reg) ROWS * 4,
        options(nostack)
    );
}

macro_rules! entry {
    ($name:ident, $f:ident, $format:expr) => {
        /// AMX kernel (module docs): AVX-512 VNNI below `STREAM_MIN_ROWS` activation rows,
        /// the streaming walk up to `MIN_ROWS`, `gemm` above.
        ///
        /// # Safety
        /// [`available`] is true (it implies AVX-512 VNNI here), and the lengths `GemmKernel`
        /// documents hold.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(w: &[u8], n_rows: usize, row_bytes: usize, x: &[i8], x_sums: &[i32], m: usize, kp: usize, out: &mut [i32]) {
            if m < STREAM_MIN_ROWS {
                super::avx512::kernel($format, true)(w, n_rows, row_bytes, x, x_sums, m, kp, out)
            } else if m <= MIN_ROWS {
                gemm_streaming::<$f>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
            } else {
                gemm::<$f>(w, n_rows, row_bytes, x, x_sums, m, kp, out)
            }
        }
    };
}

entry!(gemm_t2_i8_amx, T2, WeightFormat::Ternary2);
entry!(gemm_t16_i8_amx, T16, WeightFormat::Ternary1_6);
entry!(gemm_b1_i8_amx, B1, WeightFormat::Binary1);

/// The AMX kernel of `format`.
pub fn kernel(format: WeightFormat) -> GemmKernel {
    match format {
        WeightFormat::Ternary2 => gemm_t2_i8_amx,
        WeightFormat::Ternary1_6 => gemm_t16_i8_amx,
        WeightFormat::Binary1 => gemm_b1_i8_amx,
    }
}
