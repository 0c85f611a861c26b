//! Dequantization of every storage type to f32, exact unpacking of the ternary types, and the
//! quantizers that produce GGUF block bytes for binllm's writer.
//!
//! Block layouts follow ggml (ggml-common.h) and bitnet.cpp; the decoders reproduce their
//! `dequantize_row_*` results, including what they do with the one unused 2-bit code (TQ2_0:
//! `(3 - 1) * d`, I2_S: 0). `unpack_ternary` is stricter and rejects that code.
//!
//! Callers have already checked `data.len()` against dtype and shape (see `storage_bytes`), so
//! every block loop below walks whole blocks and indexes only at constant offsets inside them.

use half::{bf16, f16};

use super::{DType, TernaryTensor, I2_S_TAIL_BYTES};
use crate::error::Result;

type Reason = String;

/// Whole fixed-size blocks of `data` (a short tail, impossible after validation, is skipped
/// and then caught by the length check in `dequantize`).
fn blocks<const N: usize>(data: &[u8]) -> impl Iterator<Item = &[u8; N]> {
    data.chunks_exact(N).filter_map(|c| <&[u8; N]>::try_from(c).ok())
}

fn f16_at(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Dequantize `numel` elements of `dtype` stored in `data` (length already validated).
pub(crate) fn dequantize(dtype: DType, data: &[u8], numel: usize) -> std::result::Result<Vec<f32>, Reason> {
    let mut out: Vec<f32> = Vec::with_capacity(numel);
    match dtype {
        DType::F32 => out.extend(blocks::<4>(data).map(|b| f32::from_le_bytes(*b))),
        DType::F16 => out.extend(blocks::<2>(data).map(|b| f16_at(b[0], b[1]))),
        DType::BF16 => out.extend(blocks::<2>(data).map(|b| bf16::from_bits(u16::from_le_bytes(*b)).to_f32())),
        DType::F64 => out.extend(blocks::<8>(data).map(|b| f64::from_le_bytes(*b) as f32)),
        DType::U8 => out.extend(data.iter().map(|&b| b as f32)),
        DType::I8 => out.extend(data.iter().map(|&b| b as i8 as f32)),
        DType::I16 => out.extend(blocks::<2>(data).map(|b| i16::from_le_bytes(*b) as f32)),
        DType::I32 => out.extend(blocks::<4>(data).map(|b| i32::from_le_bytes(*b) as f32)),
        DType::I64 => out.extend(blocks::<8>(data).map(|b| i64::from_le_bytes(*b) as f32)),
        DType::Q4_0 => blocks::<18>(data).for_each(|b| q4_0(b, &mut out)),
        DType::Q4_1 => blocks::<20>(data).for_each(|b| q4_1(b, &mut out)),
        DType::Q5_0 => blocks::<22>(data).for_each(|b| q5_0(b, &mut out)),
        DType::Q5_1 => blocks::<24>(data).for_each(|b| q5_1(b, &mut out)),
        DType::Q8_0 => blocks::<34>(data).for_each(|b| q8_0(b, &mut out)),
        DType::Q8_1 => blocks::<36>(data).for_each(|b| q8_1(b, &mut out)),
        DType::Q2_K => blocks::<84>(data).for_each(|b| q2_k(b, &mut out)),
        DType::Q3_K => blocks::<110>(data).for_each(|b| q3_k(b, &mut out)),
        DType::Q4_K => blocks::<144>(data).for_each(|b| q4_k(b, &mut out)),
        DType::Q5_K => blocks::<176>(data).for_each(|b| q5_k(b, &mut out)),
        DType::Q6_K => blocks::<210>(data).for_each(|b| q6_k(b, &mut out)),
        DType::Q8_K => blocks::<292>(data).for_each(|b| q8_k(b, &mut out)),
        DType::TQ1_0 => blocks::<54>(data).for_each(|b| {
            let d = f16_at(b[52], b[53]);
            out.extend(tq1_0_trits(b).iter().map(|&t| (t as i32 - 1) as f32 * d));
        }),
        DType::TQ2_0 => blocks::<66>(data).for_each(|b| {
            let d = f16_at(b[64], b[65]);
            out.extend(tq2_0_fields(b).iter().map(|&q| (q as i32 - 1) as f32 * d));
        }),
        DType::I2_S => {
            let (packed, scale) = split_i2_s(data, numel)?;
            // bitnet.cpp's map2bit: codes 0, 1, 2 = -1, 0, +1; the unused code 3 reads as 0.
            const MAP: [f32; 4] = [-1.0, 0.0, 1.0, 0.0];
            for b in blocks::<32>(packed) {
                for group in 0..4 {
                    let shift = 6 - 2 * group;
                    out.extend(b.iter().map(|&byte| scale * MAP[((byte >> shift) & 3) as usize]));
                }
            }
        }
    }
    if out.len() != numel {
        return Err(format!("{} data decodes to {} values, shape needs {numel}", dtype.name(), out.len()));
    }
    Ok(out)
}

// ---- 32-weight blocks: element j and j + 16 share byte j of the nibbles ----

fn q4_0(b: &[u8; 18], out: &mut Vec<f32>) {
    let d = f16_at(b[0], b[1]);
    let qs = &b[2..18];
    let mut y = [0f32; 32];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
    out.extend_from_slice(&y);
}

fn q4_1(b: &[u8; 20], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b[0], b[1]), f16_at(b[2], b[3]));
    let qs = &b[4..20];
    let mut y = [0f32; 32];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
    out.extend_from_slice(&y);
}

/// Fifth bits of a Q5 block: bit j of the little-endian u32 belongs to element j.
fn q5_values(qh: u32, qs: &[u8]) -> [i32; 32] {
    let mut v = [0i32; 32];
    for j in 0..16 {
        let hi0 = ((qh >> j) & 1) as i32;
        let hi1 = ((qh >> (j + 16)) & 1) as i32;
        v[j] = (qs[j] & 0x0F) as i32 | (hi0 << 4);
        v[j + 16] = (qs[j] >> 4) as i32 | (hi1 << 4);
    }
    v
}

fn q5_0(b: &[u8; 22], out: &mut Vec<f32>) {
    let d = f16_at(b[0], b[1]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    out.extend(q5_values(qh, &b[6..22]).iter().map(|&v| (v - 16) as f32 * d));
}

fn q5_1(b: &[u8; 24], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b[0], b[1]), f16_at(b[2], b[3]));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    out.extend(q5_values(qh, &b[8..24]).iter().map(|&v| v as f32 * d + m));
}

fn q8_0(b: &[u8; 34], out: &mut Vec<f32>) {
    let d = f16_at(b[0], b[1]);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

fn q8_1(b: &[u8; 36], out: &mut Vec<f32>) {
    // b[2..4] is s = d * sum(qs), a cache for dot products; the values need only d.
    let d = f16_at(b[0], b[1]);
    out.extend(b[4..36].iter().map(|&q| q as i8 as f32 * d));
}

// ---- 256-weight k-quant super-blocks ----

fn q2_k(b: &[u8; 84], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b[80], b[81]), f16_at(b[82], b[83]));
    // Per 128 weights: 32 bytes, four 2-bit planes; each plane is two 16-weight sub-blocks.
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for plane in 0..4 {
            let shift = 2 * plane;
            for sub in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    out.push(dl * ((q[16 * sub + l] >> shift) & 3) as f32 - ml);
                }
            }
        }
    }
}

/// The sixteen signed 6-bit scales of a Q3_K block: low nibbles in bytes 0..8 (two per byte),
/// the top two bits of scale j in byte 8 + j % 4 at bit 2 * (j / 4).
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

fn q3_k(b: &[u8; 110], out: &mut Vec<f32>) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b[108], b[109]);
    let mut is = 0;
    let mut m: u8 = 1; // high-bit plane, one per 32 weights across the whole block
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for plane in 0..4 {
            let shift = 2 * plane;
            for sub in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let i = 16 * sub + l;
                    let low = ((q[i] >> shift) & 3) as i32;
                    let v = if hmask[i] & m != 0 { low } else { low - 4 };
                    out.push(dl * v as f32);
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// Scale and min (6 bits each) of sub-block j of a Q4_K / Q5_K block.
fn k4_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

fn q4_k(b: &[u8; 144], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b[0], b[1]), f16_at(b[2], b[3]));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let (sc1, m1) = k4_scale_min(2 * chunk, scales);
        let (sc2, m2) = k4_scale_min(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|&x| d1 * (x & 0x0F) as f32 - min1));
        out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - min2));
    }
}

fn q5_k(b: &[u8; 176], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b[0], b[1]), f16_at(b[2], b[3]));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (sc1, m1) = k4_scale_min(2 * chunk, scales);
        let (sc2, m2) = k4_scale_min(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let hi = if qh[l] & u1 != 0 { 16 } else { 0 };
            out.push(d1 * ((q[l] & 0x0F) + hi) as f32 - min1);
        }
        for l in 0..32 {
            let hi = if qh[l] & u2 != 0 { 16 } else { 0 };
            out.push(d2 * ((q[l] >> 4) + hi) as f32 - min2);
        }
    }
}

fn q6_k(b: &[u8; 210], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b[208], b[209]);
    let mut y = [0f32; 256];
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        let y = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
    out.extend_from_slice(&y);
}

fn q8_k(b: &[u8; 292], out: &mut Vec<f32>) {
    // b[260..292] holds 16 i16 partial sums for dot products; values need only d.
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    out.extend(b[4..260].iter().map(|&q| q as i8 as f32 * d));
}

// ---- ternary ----

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Trits (0, 1, 2 = -1, 0, +1) of a TQ1_0 block, in weight order.
///
/// A byte holds 5 trits as `ceil(t * 256 / 243)` of the base-3 number whose most significant
/// digit is the first trit; multiplying by 3^n (mod 256) brings trit n to the top, where
/// `(x * 3) >> 8` reads it. Bytes 0..32 hold weights m + 32 n (160 weights), bytes 32..48 hold
/// 160 + m + 16 n, and the 4 `qh` bytes hold 4 trits each: weight 240 + j + 4 n.
fn tq1_0_trits(b: &[u8; 54]) -> [u8; 256] {
    let trit = |byte: u8, n: usize| ((byte.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8;
    let mut t = [0u8; 256];
    for n in 0..5 {
        for m in 0..32 {
            t[32 * n + m] = trit(b[m], n);
        }
        for m in 0..16 {
            t[160 + 16 * n + m] = trit(b[32 + m], n);
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            t[240 + 4 * n + j] = trit(b[48 + j], n);
        }
    }
    t
}

/// 2-bit fields (code + 1) of a TQ2_0 block, in weight order: each 32-byte chunk holds 128
/// weights, weight 32 l + m of the chunk in byte m at bit 2 l.
fn tq2_0_fields(b: &[u8; 66]) -> [u8; 256] {
    let mut t = [0u8; 256];
    for chunk in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                t[128 * chunk + 32 * l + m] = (b[32 * chunk + m] >> (2 * l)) & 3;
            }
        }
    }
    t
}

/// Packed bytes and scale of an I2_S tensor (length validated: numel / 4 + 32).
fn split_i2_s(data: &[u8], numel: usize) -> std::result::Result<(&[u8], f32), Reason> {
    let packed_len = numel / 4;
    match (data.get(..packed_len), data.get(packed_len..packed_len + 4)) {
        (Some(packed), Some(&[a, b, c, d])) => Ok((packed, f32::from_le_bytes([a, b, c, d]))),
        _ => Err(format!("I2_S data of {} bytes is too short for {numel} weights", data.len())),
    }
}

/// The scale shared by a row's blocks, ignoring blocks whose codes are all zero (their scale
/// multiplies nothing); `None` when two contributing blocks differ.
fn row_scale(codes: &[i8], scales: &[f32], block_len: usize) -> Option<f32> {
    let mut common: Option<f32> = None;
    for (block, &s) in codes.chunks(block_len.max(1)).zip(scales) {
        if block.iter().all(|&c| c == 0) {
            continue;
        }
        match common {
            None => common = Some(s),
            Some(c) if c.to_bits() == s.to_bits() => {}
            Some(_) => return None,
        }
    }
    Some(common.unwrap_or_else(|| scales.first().copied().unwrap_or(0.0)))
}

pub(crate) fn first_row_with_varying_scales(t: &TernaryTensor) -> Option<usize> {
    let per_row = t.cols.checked_div(t.block_len).unwrap_or(0);
    (0..t.rows).find(|&r| {
        let codes = t.codes.get(r * t.cols..(r + 1) * t.cols).unwrap_or(&[]);
        let scales = t.block_scales.get(r * per_row..(r + 1) * per_row).unwrap_or(&[]);
        row_scale(codes, scales, t.block_len).is_none()
    })
}

/// Unpack a ternary tensor of `rows` x `cols` (data length validated by the caller).
pub(crate) fn unpack_ternary(dtype: DType, data: &[u8], rows: usize, cols: usize) -> std::result::Result<TernaryTensor, Reason> {
    let numel = rows.checked_mul(cols).ok_or("rows * cols overflows")?;
    let mut codes: Vec<i8> = Vec::with_capacity(numel);
    let (block_scales, block_len) = match dtype {
        DType::TQ1_0 | DType::TQ2_0 => {
            let mut scales = Vec::with_capacity(numel / 256);
            if dtype == DType::TQ1_0 {
                for b in blocks::<54>(data) {
                    scales.push(f16_at(b[52], b[53]));
                    codes.extend(tq1_0_trits(b).iter().map(|&t| t as i8 - 1));
                }
            } else {
                for (i, b) in blocks::<66>(data).enumerate() {
                    scales.push(f16_at(b[64], b[65]));
                    let fields = tq2_0_fields(b);
                    // A branch-free test first (it vectorizes); the position only for the error.
                    if fields.iter().fold(false, |bad, &q| bad | (q == 3)) {
                        let pos = fields.iter().position(|&q| q == 3).unwrap_or(0);
                        return Err(format!("TQ2_0 weight {} holds the 2-bit code 3, which is not ternary", i * 256 + pos));
                    }
                    codes.extend(fields.iter().map(|&q| q as i8 - 1));
                }
            }
            (scales, 256)
        }
        DType::I2_S => {
            let (packed, scale) = split_i2_s(data, numel)?;
            for (i, b) in blocks::<32>(packed).enumerate() {
                for group in 0..4 {
                    let shift = 6 - 2 * group;
                    for (m, &byte) in b.iter().enumerate() {
                        let q = (byte >> shift) & 3;
                        if q == 3 {
                            return Err(format!("I2_S weight {} holds the 2-bit code 3, which is not ternary", i * 128 + group * 32 + m));
                        }
                        codes.push(q as i8 - 1);
                    }
                }
            }
            (vec![scale; rows], cols)
        }
        other => return Err(format!("{} is not a ternary type", other.name())),
    };
    if codes.len() != numel {
        return Err(format!("data decodes to {} codes, shape needs {numel}", codes.len()));
    }
    let per_row = cols.checked_div(block_len).unwrap_or(0);
    let mut row_scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row_codes = codes.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
        let scales = block_scales.get(r * per_row..(r + 1) * per_row).unwrap_or(&[]);
        match row_scale(row_codes, scales, block_len) {
            Some(s) => row_scales.push(s),
            None => {
                row_scales = Vec::new();
                break;
            }
        }
    }
    Ok(TernaryTensor { rows, cols, codes, row_scales, block_scales, block_len })
}

// ---- quantizers (binllm writes these; llama.cpp / bitnet.cpp read them) ----

fn check_codes(codes: &[i8], rows: usize, cols: usize, block: usize, what: &str) -> Result<()> {
    if !cols.is_multiple_of(block) {
        crate::bail!(InvalidArgument, "{what}: row length {cols} is not a multiple of {block} (store such tensors as F16)");
    }
    let numel = rows.checked_mul(cols);
    if numel != Some(codes.len()) {
        crate::bail!(InvalidArgument, "{what}: {} codes for a {rows} x {cols} matrix", codes.len());
    }
    if let Some(i) = crate::formats::WeightFormat::Ternary2.spec().first_invalid(codes) {
        crate::bail!(InvalidArgument, "{what}: code {} at index {i} is not -1, 0 or 1", codes[i]);
    }
    Ok(())
}

fn f16_scale(s: f32, what: &str) -> Result<f16> {
    let h = f16::from_f32(s);
    if !h.is_finite() {
        crate::bail!(InvalidArgument, "{what}: scale {s} does not fit in fp16");
    }
    Ok(h)
}

/// One fp16 scale per 256-block: `scales` holds one per row (repeated over the row's blocks)
/// or one per block.
fn check_block_scales(scales: &[f32], rows: usize, cols: usize, what: &str) -> Result<Vec<f16>> {
    let per_row = cols / 256;
    let per_block = if scales.len() == rows {
        false
    } else if scales.len() == rows * per_row {
        true
    } else {
        crate::bail!(InvalidArgument, "{what}: {} scales for {rows} rows of {per_row} blocks (give one per row or one per block)", scales.len());
    };
    let stored = scales.iter().map(|&s| f16_scale(s, what)).collect::<Result<Vec<_>>>()?;
    if per_block {
        Ok(stored)
    } else {
        Ok(stored.iter().flat_map(|&s| std::iter::repeat_n(s, per_row)).collect())
    }
}

/// Pack ternary codes (row-major, values -1/0/1) as GGUF TQ2_0: per 256 weights, 64 bytes of
/// 2-bit fields and the block's scale as fp16 (66 bytes, 2.0625 bits per weight). `row_scales`
/// holds one scale per row or one per 256-block.
pub fn quantize_tq2_0(codes: &[i8], rows: usize, cols: usize, row_scales: &[f32]) -> Result<Vec<u8>> {
    check_codes(codes, rows, cols, 256, "quantize_tq2_0")?;
    let scales = check_block_scales(row_scales, rows, cols, "quantize_tq2_0")?;
    let mut out = Vec::with_capacity(codes.len() / 256 * 66);
    for (i, block) in codes.chunks_exact(256).enumerate() {
        for chunk in block.chunks_exact(128) {
            for m in 0..32 {
                let mut byte = 0u8;
                for l in 0..4 {
                    byte |= ((chunk[32 * l + m] + 1) as u8) << (2 * l);
                }
                out.push(byte);
            }
        }
        let d = scales.get(i).copied().unwrap_or(f16::ZERO);
        out.extend_from_slice(&d.to_le_bytes());
    }
    Ok(out)
}

/// Pack ternary codes as GGUF TQ1_0: per 256 weights, 48 bytes of 5 trits, 4 bytes of 4 trits
/// and the block's scale as fp16 (54 bytes, 1.6875 bits per weight; scales as for TQ2_0).
/// Layout: see `tq1_0_trits`.
pub fn quantize_tq1_0(codes: &[i8], rows: usize, cols: usize, row_scales: &[f32]) -> Result<Vec<u8>> {
    check_codes(codes, rows, cols, 256, "quantize_tq1_0")?;
    let scales = check_block_scales(row_scales, rows, cols, "quantize_tq1_0")?;
    // Base-3 number of the trits (most significant first), stored as ceil(v * 256 / 243) so
    // that the decoder's multiply-by-3^n-and-take-the-top trick reads each trit back.
    let pack = |trits: &mut dyn Iterator<Item = i8>, pad: u16| -> u8 {
        let v = trits.fold(0u16, |v, c| v * 3 + (c + 1) as u16) * pad;
        (v * 256).div_ceil(243) as u8
    };
    let mut out = Vec::with_capacity(codes.len() / 256 * 54);
    for (i, block) in codes.chunks_exact(256).enumerate() {
        for m in 0..32 {
            out.push(pack(&mut (0..5).map(|n| block[m + 32 * n]), 1));
        }
        for m in 0..16 {
            out.push(pack(&mut (0..5).map(|n| block[160 + m + 16 * n]), 1));
        }
        for j in 0..4 {
            // Four trits, shifted up one place so the first is the most significant of five.
            out.push(pack(&mut (0..4).map(|n| block[240 + j + 4 * n]), 3));
        }
        let d = scales.get(i).copied().unwrap_or(f16::ZERO);
        out.extend_from_slice(&d.to_le_bytes());
    }
    Ok(out)
}

/// Pack ternary codes in bitnet.cpp's x86 I2_S layout: 128-weight blocks of 32 bytes (byte j
/// holds weights j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 as code + 1), then a 32-byte
/// tail starting with the tensor's f32 `scale`. Size: numel / 4 + 32 bytes.
pub fn quantize_i2_s(codes: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Vec<u8>> {
    check_codes(codes, rows, cols, 128, "quantize_i2_s")?;
    if !scale.is_finite() {
        crate::bail!(InvalidArgument, "quantize_i2_s: scale {scale} is not finite");
    }
    let mut out = Vec::with_capacity(codes.len() / 4 + I2_S_TAIL_BYTES);
    for block in codes.chunks_exact(128) {
        for m in 0..32 {
            let mut byte = 0u8;
            for group in 0..4 {
                byte |= ((block[32 * group + m] + 1) as u8) << (6 - 2 * group);
            }
            out.push(byte);
        }
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.resize(out.len() + I2_S_TAIL_BYTES - 4, 0);
    Ok(out)
}

/// Little-endian fp16 bytes (round to nearest even), for F16 tensors.
pub fn f32_to_f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
}

/// GGUF Q8_0 as ggml's reference quantizer writes it: per 32 values, d = max|x| / 127 stored
/// as fp16, then round(x / d) as i8 (computed with the f32 d, as ggml does).
pub fn quantize_q8_0(x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if !cols.is_multiple_of(32) {
        crate::bail!(InvalidArgument, "quantize_q8_0: row length {cols} is not a multiple of 32");
    }
    if rows.checked_mul(cols) != Some(x.len()) {
        crate::bail!(InvalidArgument, "quantize_q8_0: {} values for a {rows} x {cols} matrix", x.len());
    }
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Decodes whole Q6_K blocks (`data.len()` a multiple of 210) to f32, as ggml does.
pub fn dequantize_q6_k(data: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len() / 210 * 256);
    dequantize_q6_k_into(data, &mut out);
    out
}

/// `dequantize_q6_k`, appending to `out` (no allocation when it has room).
pub fn dequantize_q6_k_into(data: &[u8], out: &mut Vec<f32>) {
    blocks::<210>(data).for_each(|b| q6_k(b, out));
}

/// `x` rounded half away from zero, through the truncating conversion (one instruction;
/// `f32::round` is a libm call on baseline x86-64). Saturates far outside i32's range.
fn round_away(x: f32) -> i32 {
    (x + 0.5f32.copysign(x)) as i32
}

/// The scale of one 16-weight sub-block for 6-bit codes -32..31: the value of largest
/// magnitude maps near -32 (the wider side); of a few step sizes around that, the codes whose
/// least-squares scale leaves the smallest error weighted by `x^2` win (error
/// `sum w x^2 - (sum w x q)^2 / sum w q^2`: the best codes have the largest
/// `(sum w x q)^2 / sum w q^2`). Weighting large values more, as ggml's Q6_K quantizer does,
/// measured better: SmolLM2-135M's Hamlet perplexity with a Q6_K output layer rose 1.0%
/// over f16 against 1.1% unweighted.
fn q6_k_sub_scale(v: &[f32]) -> f32 {
    let vmax = v.iter().fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
    if vmax == 0.0 {
        return 0.0;
    }
    let (mut best, mut best_fit) = (-vmax / 32.0, 0f32);
    for t in -4..=4 {
        let inv = -(32.0 + 0.25 * t as f32) / vmax;
        let (mut sxq, mut sqq) = (0f32, 0f32);
        for &x in v {
            // Clamped before rounding (the same codes): this loop then vectorizes on SSE2.
            let q = round_away((x * inv).clamp(-32.0, 31.0)) as f32;
            let w = x * x;
            sxq += w * x * q;
            sqq += w * q * q;
        }
        if sqq > 0.0 && sxq * sxq / sqq > best_fit {
            (best, best_fit) = (sxq / sqq, sxq * sxq / sqq);
        }
    }
    best
}

/// One Q6_K block (GGML's layout, see `q6_k`) from 256 values: sub-block scales by
/// `q6_k_sub_scale`, stored as int8 steps of the f16 block scale `d = max|scale| / 127`, then
/// each value's code `round(x / (d * sc)) + 32`, clamped to 0..63.
pub fn quantize_q6_k_block(x: &[f32]) -> [u8; 210] {
    debug_assert_eq!(x.len(), 256);
    let mut scales = [0f32; 16];
    for (s, v) in scales.iter_mut().zip(x.chunks_exact(16)) {
        *s = q6_k_sub_scale(v);
    }
    let smax = scales.iter().fold(0f32, |m, s| m.max(s.abs()));
    let d = f16::from_f32(smax / 127.0);
    let df = d.to_f32();
    let sc = scales.map(|s| if df > 0.0 { round_away(s / df).clamp(-127, 127) as i8 } else { 0 });
    let mut u = [32u8; 256];
    for (j, (u, v)) in u.chunks_exact_mut(16).zip(x.chunks_exact(16)).enumerate() {
        let step = df * sc[j] as f32;
        if step != 0.0 {
            let inv = 1.0 / step;
            for (u, &v) in u.iter_mut().zip(v) {
                *u = (round_away(v * inv).clamp(-32, 31) + 32) as u8;
            }
        }
    }
    let mut b = [0u8; 210];
    for half in 0..2 {
        let u = &u[128 * half..];
        for l in 0..32 {
            b[64 * half + l] = (u[l] & 0x0F) | ((u[l + 64] & 0x0F) << 4);
            b[64 * half + l + 32] = (u[l + 32] & 0x0F) | ((u[l + 96] & 0x0F) << 4);
            b[128 + 32 * half + l] = (u[l] >> 4) | ((u[l + 32] >> 4) << 2) | ((u[l + 64] >> 4) << 4) | ((u[l + 96] >> 4) << 6);
        }
    }
    for (j, &s) in sc.iter().enumerate() {
        b[192 + j] = s as u8;
    }
    b[208..210].copy_from_slice(&d.to_le_bytes());
    b
}

/// GGUF Q6_K bytes of a row-major `rows x cols` matrix (`cols` a multiple of 256).
pub fn quantize_q6_k(x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if !cols.is_multiple_of(256) {
        crate::bail!(InvalidArgument, "quantize_q6_k: row length {cols} is not a multiple of 256");
    }
    if rows.checked_mul(cols) != Some(x.len()) {
        crate::bail!(InvalidArgument, "quantize_q6_k: {} values for a {rows} x {cols} matrix", x.len());
    }
    Ok(x.chunks_exact(256).flat_map(quantize_q6_k_block).collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Rng;
    use super::super::TensorView;
    use super::*;
    use crate::error::Error;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn view(dtype: DType, shape: &[usize], data: &[u8]) -> Vec<f32> {
        TensorView { name: "t".into(), dtype, shape: shape.to_vec(), data, lazy: None }.to_f32().unwrap()
    }

    #[test]
    fn q4_0_hand_block() {
        let mut b = vec![];
        b.extend_from_slice(&h(0.5));
        // byte j: low nibble j (element j), high nibble 15 - j (element j + 16)
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = view(DType::Q4_0, &[32], &b);
        assert_eq!(y[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(y[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(y[16], 3.5); // (15 - 8) * 0.5
        assert_eq!(y[31], -4.0); // (0 - 8) * 0.5
        assert_eq!(y[9], 0.5);
    }

    #[test]
    fn q4_1_hand_block() {
        let mut b = vec![];
        b.extend_from_slice(&h(0.25));
        b.extend_from_slice(&h(-1.0));
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let y = view(DType::Q4_1, &[32], &b);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[8], 1.0); // 8 * 0.25 - 1
        assert_eq!(y[15], 2.75);
        assert!(y[16..].iter().all(|&v| v == -0.25)); // 3 * 0.25 - 1
    }

    #[test]
    fn q8_0_hand_block_and_quantizer() {
        let mut b = vec![];
        b.extend_from_slice(&h(2.0));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        b.extend_from_slice(&h(-0.5));
        b.extend([0x80u8; 32]); // -128
        let y = view(DType::Q8_0, &[2, 32], &b);
        assert_eq!(y[0], -32.0);
        assert_eq!(y[31], 30.0);
        assert!(y[32..].iter().all(|&v| v == 64.0));

        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..3 * 64).map(|_| rng.normal()).collect();
        let q = quantize_q8_0(&x, 3, 64).unwrap();
        assert_eq!(q.len(), 3 * 2 * 34);
        let back = view(DType::Q8_0, &[3, 64], &q);
        for (blk, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= amax / 127.0 * 0.51 + amax * 1e-3, "block {blk}");
            }
        }
        assert!(quantize_q8_0(&x, 3, 63).is_err());
        assert!(quantize_q8_0(&x, 2, 64).is_err());
    }

    #[test]
    fn q5_hand_blocks() {
        // Q5_0: element 0 and element 16 get their fifth bit from qh bits 0 and 16.
        let mut b = vec![];
        b.extend_from_slice(&h(1.0));
        b.extend_from_slice(&(1u32 | 1 << 16 | 1 << 31).to_le_bytes());
        b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let y = view(DType::Q5_0, &[32], &b);
        assert_eq!(y[0], (17 - 16) as f32);
        assert_eq!(y[1], (1 - 16) as f32);
        assert_eq!(y[16], (18 - 16) as f32);
        assert_eq!(y[31], (18 - 16) as f32);
        assert_eq!(y[17], (2 - 16) as f32);
        // Q5_1 with min
        let mut b = vec![];
        b.extend_from_slice(&h(0.5));
        b.extend_from_slice(&h(10.0));
        b.extend_from_slice(&(1u32 << 3).to_le_bytes());
        b.extend([0xF0u8; 16]);
        let y = view(DType::Q5_1, &[32], &b);
        assert_eq!(y[3], 16.0 * 0.5 + 10.0);
        assert_eq!(y[0], 10.0);
        assert_eq!(y[16], 15.0 * 0.5 + 10.0);
    }

    #[test]
    fn q6_k_hand_block() {
        let mut b = vec![0u8; 210];
        // ql[0] = 0x21: element 0 low nibble 1, element 64 low nibble 2 (high nibble of ql[0]).
        b[0] = 0x21;
        // qh[0] = 0b11_10_01_00: elements 0, 32, 64, 96 get high bits 0, 1, 2, 3.
        b[128] = 0b1110_0100;
        for s in 0..16 {
            b[192 + s] = (s as i8 + 1) as u8; // scales 1..16
        }
        b[192 + 4] = (-3i8) as u8;
        b[208..210].copy_from_slice(&h(0.5));
        let y = view(DType::Q6_K, &[256], &b);
        assert_eq!(y[0], 0.5 * 1.0 * (1 - 32) as f32); // scale 0
        assert_eq!(y[32], 0.5 * 3.0 * (16 - 32) as f32); // scale 2, q = 0 | 1 << 4
        assert_eq!(y[64], 0.5 * -3.0 * ((2 | 2 << 4) - 32) as f32); // scale 4 = -3
        assert_eq!(y[96], 0.5 * 7.0 * ((3 << 4) - 32) as f32); // scale 6
        assert_eq!(y[16], 0.5 * 2.0 * -32.0); // second 16 of the first 32 use scale 1
        assert_eq!(y[128], 0.5 * 9.0 * -32.0); // second half starts at scale 8
    }

    /// The Q6_K quantizer against the element-by-element reading below: codes land where the
    /// layout puts them, a zero block stays zero, and Gaussian rows come back within Q6_K's
    /// error (about a quarter of a step between codes, 1/2.5 of 8-bit blocks' accuracy).
    #[test]
    fn q6_k_quantizer_round_trips() {
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..1024).map(|_| rng.normal() * 0.02).collect();
        let bytes = quantize_q6_k(&x, 4, 256).unwrap();
        assert_eq!(bytes.len(), 4 * 210);
        let y = dequantize_q6_k(&bytes);
        for (i, b) in bytes.chunks_exact(210).enumerate() {
            for e in 0..256 {
                assert_eq!(q6_k_element(b, e), y[i * 256 + e], "block {i} element {e}");
            }
        }
        let rms = |v: &[f32]| (v.iter().map(|a| a * a).sum::<f32>() / v.len() as f32).sqrt();
        let err: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        let q8 = view(DType::Q8_0, &[1024], &quantize_q8_0(&x, 4, 256).unwrap());
        let err8: Vec<f32> = x.iter().zip(&q8).map(|(a, b)| a - b).collect();
        let (rel, rel8) = (rms(&err) / rms(&x), rms(&err8) / rms(&x));
        assert!(rel < 0.02 && rel > rel8, "q6_k {rel}, q8_0 {rel8}");
        // The largest value of each sub-block is within half a step of its code.
        for (xs, ys) in x.chunks(16).zip(y.chunks(16)) {
            let i = (0..16).max_by(|&a, &b| xs[a].abs().total_cmp(&xs[b].abs())).unwrap();
            assert!((xs[i] - ys[i]).abs() <= xs[i].abs() / 31.0, "{} vs {}", xs[i], ys[i]);
        }
        assert!(dequantize_q6_k(&quantize_q6_k(&[0.0; 256], 1, 256).unwrap()).iter().all(|&v| v == 0.0));
        assert!(quantize_q6_k(&x, 8, 128).is_err());
    }

    /// Element-by-element readings of the k-quant layouts, written from the layout description
    /// (not from the block loops above), compared on random blocks.
    fn q6_k_element(b: &[u8], e: usize) -> f32 {
        let (half, r) = (e / 128, e % 128);
        let (g, l) = (r / 32, r % 32);
        let ql = b[64 * half + l + 32 * (g % 2)];
        let low = if g < 2 { ql & 0xF } else { ql >> 4 };
        let high = (b[128 + 32 * half + l] >> (2 * g)) & 3;
        let sc = b[192 + 8 * half + l / 16 + 2 * g] as i8 as f32;
        f16_at(b[208], b[209]) * sc * ((low | high << 4) as i32 - 32) as f32
    }

    fn q4_k_element(b: &[u8], e: usize, five_bit: bool) -> f32 {
        let (chunk, r) = (e / 64, e % 64);
        let (sub, l) = (2 * chunk + r / 32, r % 32);
        let qs_at = if five_bit { 48 } else { 16 };
        let byte = b[qs_at + 32 * chunk + l];
        let mut q = if r < 32 { byte & 0xF } else { byte >> 4 } as i32;
        if five_bit && (b[16 + l] >> sub) & 1 == 1 {
            q += 16;
        }
        let (sc, m) = k4_scale_min(sub, &b[4..16]);
        f16_at(b[0], b[1]) * sc as f32 * q as f32 - f16_at(b[2], b[3]) * m as f32
    }

    fn q2_k_element(b: &[u8], e: usize) -> f32 {
        let (half, r) = (e / 128, e % 128);
        let (plane, l) = (r / 32, r % 32);
        let q = (b[16 + 32 * half + l] >> (2 * plane)) & 3;
        let sc = b[e / 16];
        f16_at(b[80], b[81]) * (sc & 0xF) as f32 * q as f32 - f16_at(b[82], b[83]) * (sc >> 4) as f32
    }

    fn q3_k_element(b: &[u8], e: usize) -> f32 {
        let (half, r) = (e / 128, e % 128);
        let (plane, l) = (r / 32, r % 32);
        let low = ((b[32 + 32 * half + l] >> (2 * plane)) & 3) as i32;
        let high_set = (b[l] >> (4 * half + plane)) & 1 == 1;
        let q = if high_set { low } else { low - 4 };
        let sc = q3_k_scales(&b[96..108])[e / 16];
        f16_at(b[108], b[109]) * sc as f32 * q as f32
    }

    fn random_block(rng: &mut Rng, n: usize, f16_at_: &[usize]) -> Vec<u8> {
        let mut b: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
        for &at in f16_at_ {
            b[at..at + 2].copy_from_slice(&h(rng.normal()));
        }
        b
    }

    #[test]
    fn k_quants_match_element_formulas() {
        let mut rng = Rng::new(11);
        for _ in 0..50 {
            type Element = fn(&[u8], usize) -> f32;
            let cases: [(DType, usize, &[usize], Element); 5] = [
                (DType::Q6_K, 210, &[208], q6_k_element),
                (DType::Q4_K, 144, &[0, 2], |b, e| q4_k_element(b, e, false)),
                (DType::Q5_K, 176, &[0, 2], |b, e| q4_k_element(b, e, true)),
                (DType::Q2_K, 84, &[80, 82], q2_k_element),
                (DType::Q3_K, 110, &[108], q3_k_element),
            ];
            for (dtype, n, halves, element) in cases {
                let b = random_block(&mut rng, n, halves);
                let y = view(dtype, &[256], &b);
                for (e, &got) in y.iter().enumerate() {
                    let want = element(&b, e);
                    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{dtype:?} element {e}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn q8_k_and_plain_types() {
        let mut b = vec![0u8; 292];
        b[0..4].copy_from_slice(&0.25f32.to_le_bytes());
        b[4] = 4;
        b[259] = (-8i8) as u8;
        let y = view(DType::Q8_K, &[256], &b);
        assert_eq!((y[0], y[1], y[255]), (1.0, 0.0, -2.0));

        assert_eq!(view(DType::BF16, &[1], &[0x80, 0x3f]), vec![1.0]);
        assert_eq!(view(DType::F16, &[1], &h(-2.5)), vec![-2.5]);
        assert_eq!(view(DType::I8, &[2], &[0xff, 3]), vec![-1.0, 3.0]);
        assert_eq!(view(DType::U8, &[1], &[200]), vec![200.0]);
        assert_eq!(view(DType::I16, &[1], &(-300i16).to_le_bytes()), vec![-300.0]);
        assert_eq!(view(DType::I64, &[1], &(-7i64).to_le_bytes()), vec![-7.0]);
        assert_eq!(view(DType::F64, &[1], &0.5f64.to_le_bytes()), vec![0.5]);
    }

    #[test]
    fn tq1_0_hand_blocks() {
        // All zeros: trit 1 everywhere; 5-trit bytes hold 11111 (base 3) = 121 ->
        // ceil(121 * 256 / 243) = 128; 4-trit bytes hold 1111 * 3 = 120 -> ceil(126.4) = 127.
        let q = quantize_tq1_0(&[0; 256], 1, 256, &[1.0]).unwrap();
        assert_eq!(q.len(), 54);
        assert!(q[..48].iter().all(|&b| b == 128));
        assert!(q[48..52].iter().all(|&b| b == 127));
        assert_eq!(&q[52..], &h(1.0));
        // All +1: 22222 = 242 -> 255; 2222 * 3 = 240 -> ceil(252.8) = 253.
        let q = quantize_tq1_0(&[1; 256], 1, 256, &[1.0]).unwrap();
        assert!(q[..48].iter().all(|&b| b == 255));
        assert!(q[48..52].iter().all(|&b| b == 253));
        // All -1: 0 -> 0.
        let q = quantize_tq1_0(&[-1; 256], 1, 256, &[1.0]).unwrap();
        assert!(q[..52].iter().all(|&b| b == 0));
        // Weight 32 is trit n = 1 of byte 0: 12111 (base 3) = 81+54+9+3+1 = 148 -> ceil(155.9).
        let mut codes = [0i8; 256];
        codes[32] = 1;
        // Weight 245 is the second trit of qh byte 1: 1211 * 3 = (27+18+3+1)*3 = 147 -> 155.
        codes[245] = 1;
        let q = quantize_tq1_0(&codes, 1, 256, &[2.0]).unwrap();
        assert_eq!(q[0], 156);
        assert_eq!(q[49], 155);
        let y = view(DType::TQ1_0, &[256], &q);
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, if i == 32 || i == 245 { 2.0 } else { 0.0 }, "weight {i}");
        }
    }

    #[test]
    fn tq2_0_and_i2_s_hand_blocks() {
        let mut codes = [0i8; 256];
        codes[33] = 1; // chunk 0, l = 1, m = 1: byte 1 bits 3:2 = 2
        codes[128 + 96 + 5] = -1; // chunk 1, l = 3, m = 5: byte 37 bits 7:6 = 0
        let q = quantize_tq2_0(&codes, 1, 256, &[0.5]).unwrap();
        assert_eq!(q.len(), 66);
        assert_eq!(q[1], 0b01_01_10_01);
        assert_eq!(q[37], 0b00_01_01_01);
        assert!(q.iter().take(64).enumerate().all(|(i, &b)| i == 1 || i == 37 || b == 0x55));

        let mut codes = [0i8; 128];
        codes[0] = 1; // byte 0 bits 7:6 = 2
        codes[32 + 3] = -1; // byte 3 bits 5:4 = 0
        codes[96 + 31] = 1; // byte 31 bits 1:0 = 2
        let q = quantize_i2_s(&codes, 1, 128, 0.75).unwrap();
        assert_eq!(q.len(), 32 + 32);
        assert_eq!(q[0], 0b10_01_01_01);
        assert_eq!(q[3], 0b01_00_01_01);
        assert_eq!(q[31], 0b01_01_01_10);
        assert_eq!(&q[32..36], &0.75f32.to_le_bytes());
        assert!(q[36..].iter().all(|&b| b == 0));
        let y = view(DType::I2_S, &[1, 128], &q);
        assert_eq!((y[0], y[35], y[127], y[1]), (0.75, -0.75, 0.75, 0.0));
    }

    fn random_codes(rng: &mut Rng, n: usize) -> Vec<i8> {
        (0..n).map(|_| (rng.next_u32() % 3) as i8 - 1).collect()
    }

    #[test]
    fn ternary_round_trips_random_shapes() {
        let mut rng = Rng::new(1234);
        let shapes = [(1, 256), (3, 512), (17, 256), (64, 768), (127, 256), (5, 1024), (300, 256)];
        for &(rows, cols) in &shapes {
            let codes = random_codes(&mut rng, rows * cols);
            let scales: Vec<f32> = (0..rows).map(|_| f16::from_f32(rng.uniform() * 3.0 + 0.01).to_f32()).collect();
            for dtype in [DType::TQ1_0, DType::TQ2_0] {
                let q = if dtype == DType::TQ1_0 {
                    quantize_tq1_0(&codes, rows, cols, &scales).unwrap()
                } else {
                    quantize_tq2_0(&codes, rows, cols, &scales).unwrap()
                };
                let v = TensorView { name: "w".into(), dtype, shape: vec![rows, cols], data: &q, lazy: None };
                let t = v.to_ternary().unwrap();
                assert_eq!((t.rows, t.cols, t.block_len), (rows, cols, 256));
                assert_eq!(t.codes, codes, "{dtype:?} {rows}x{cols}");
                assert_eq!(t.row_scales, scales);
                assert_eq!(t.block_scales.len(), rows * cols / 256);
                let y = v.to_f32().unwrap();
                for (i, (&c, &v)) in codes.iter().zip(&y).enumerate() {
                    assert_eq!(v, c as f32 * scales[i / cols]);
                }
            }
        }
        for &(rows, cols) in &[(1, 128), (3, 384), (17, 128), (64, 1024), (127, 256)] {
            let codes = random_codes(&mut rng, rows * cols);
            let scale = rng.uniform() + 0.1;
            let q = quantize_i2_s(&codes, rows, cols, scale).unwrap();
            assert_eq!(q.len(), rows * cols / 4 + 32);
            let v = TensorView { name: "w".into(), dtype: DType::I2_S, shape: vec![rows, cols], data: &q, lazy: None };
            let t = v.to_ternary().unwrap();
            assert_eq!(t.codes, codes);
            assert_eq!(t.row_scales, vec![scale; rows]);
            assert_eq!(t.block_len, cols);
            let y = v.to_f32().unwrap();
            assert!(codes.iter().zip(&y).all(|(&c, &v)| v == c as f32 * scale));
        }
    }

    #[test]
    fn per_block_scales_are_reported() {
        let codes = vec![1i8; 2 * 512];
        let mut q = quantize_tq2_0(&codes, 2, 512, &[1.0, 2.0]).unwrap();
        // Give block 1 of row 1 (the 4th block) another scale.
        q[3 * 66 + 64..3 * 66 + 66].copy_from_slice(&h(3.0));
        let v = TensorView { name: "w".into(), dtype: DType::TQ2_0, shape: vec![2, 512], data: &q, lazy: None };
        match v.to_ternary() {
            Err(Error::Unsupported(m)) => assert!(m.contains("row 1") && m.contains("'w'"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        let t = v.to_ternary_block_scaled().unwrap();
        assert!(t.row_scales.is_empty());
        assert_eq!(t.block_scales, vec![1.0, 1.0, 2.0, 3.0]);
        assert_eq!(t.codes, codes);

        // A block whose codes are all zero may carry any scale.
        let mut codes = vec![1i8; 512];
        codes[256..].fill(0);
        let mut q = quantize_tq1_0(&codes, 1, 512, &[1.5]).unwrap();
        q[54 + 52..54 + 54].copy_from_slice(&h(0.0));
        let v = TensorView { name: "w".into(), dtype: DType::TQ1_0, shape: vec![1, 512], data: &q, lazy: None };
        assert_eq!(v.to_ternary().unwrap().row_scales, vec![1.5]);
    }

    #[test]
    fn non_ternary_codes_are_rejected() {
        let mut q = quantize_tq2_0(&[0; 256], 1, 256, &[1.0]).unwrap();
        q[7] = 0xFF; // code 3 in every field of byte 7
        let v = TensorView { name: "w".into(), dtype: DType::TQ2_0, shape: vec![256], data: &q, lazy: None };
        assert!(matches!(v.to_ternary(), Err(Error::Format(_))));
        assert_eq!(v.to_f32().unwrap()[7], 2.0); // ggml reads (3 - 1) * d

        // The error names the first such weight: block 1, second half, field 3, byte 5.
        let mut q = quantize_tq2_0(&[0; 512], 1, 512, &[1.0, 1.0]).unwrap();
        q[66 + 32 + 5] = 0xC1;
        let v = TensorView { name: "w".into(), dtype: DType::TQ2_0, shape: vec![512], data: &q, lazy: None };
        let err = v.to_ternary().unwrap_err().to_string();
        assert!(err.contains("TQ2_0 weight 485 holds the 2-bit code 3"), "{err}");
        let mut q = quantize_i2_s(&[0; 128], 1, 128, 1.0).unwrap();
        q[0] = 0xFF;
        let v = TensorView { name: "w".into(), dtype: DType::I2_S, shape: vec![128], data: &q, lazy: None };
        assert!(matches!(v.to_ternary(), Err(Error::Format(_))));
        assert_eq!(v.to_f32().unwrap()[0], 0.0); // bitnet.cpp reads code 3 as 0
    }

    #[test]
    fn quantizers_validate_arguments() {
        assert!(quantize_tq2_0(&[0; 255], 1, 255, &[1.0]).is_err());
        assert!(quantize_tq1_0(&[0; 256], 1, 256, &[1.0, 2.0]).is_err());
        assert!(quantize_tq1_0(&[2; 256], 1, 256, &[1.0]).is_err());
        assert!(quantize_tq2_0(&[0; 256], 1, 256, &[1e6]).is_err());
        assert!(quantize_tq2_0(&[0; 256], 2, 256, &[1.0, 1.0]).is_err());
        assert!(quantize_i2_s(&[0; 64], 1, 64, 1.0).is_err());
        assert!(quantize_i2_s(&[0; 128], 1, 128, f32::NAN).is_err());
        assert!(quantize_i2_s(&[0; 128], usize::MAX, 128, 1.0).is_err());
        assert_eq!(f32_to_f16_bytes(&[1.0, -2.0]), [h(1.0), h(-2.0)].concat());
    }
}
