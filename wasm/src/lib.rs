//! binllm in WebAssembly: plain C-ABI entry points (no wasm-bindgen) over binllm-core. No model
//! logic lives here: each entry point checks and translates its arguments and calls the core.
//! - `generate`: load a model (GGUF, or a Hugging Face folder's files), tokenize, and generate
//!   text one token at a time; `js/engine.js` wraps it and `js/worker.js` runs it off the page's
//!   thread.
//! - this file: memory and errors shared by all, and entry points that let a JS test pack
//!   weights and run the integer kernels on a chosen backend.
//!
//! Conventions shared with `js/engine.js` and `test/kernels.test.mjs`:
//! - formats are indices into `binllm_core::formats::FORMATS` (0 t2, 1 t1.6, 2 b1);
//! - backends are indices into `binllm_core::kernels::ALL_BACKENDS` (0 scalar, 1 simd128);
//! - buffers live in this module's memory, from `binllm_alloc` and back to `binllm_free`;
//! - fallible calls return 0 (or a count), or -1 with the message at `binllm_last_error_ptr`
//!   (UTF-8, `binllm_last_error_len` bytes);
//! - a trap (an allocation that failed, a panic) cannot return an error: the host reads what
//!   happened from the [`TrapReport`] whose address `binllm_init` gives.
//!
//! Pointers, lengths and counts are `usize`/`isize` (i32 in wasm32's ABI; JS reads them with
//! `>>> 0`): the crate also builds on the host (it is a workspace member, and its tests run
//! there), where the same functions are ordinary symbols of a shared library with 64-bit
//! pointers.

use binllm_core::formats::FORMATS;
use binllm_core::kernels::QuantizedActivations;
use binllm_core::kernels::{Backend, ALL_BACKENDS};
use binllm_core::{Error, PackedMatrix, Result, ScaleKind, WeightFormat};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicUsize, Ordering};

mod generate;
pub use generate::*;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Alignment of every buffer handed out: a v128 load never straddles it.
const ALIGN: usize = 16;

fn format_at(index: u32) -> Result<WeightFormat> {
    FORMATS
        .get(index as usize)
        .map(|spec| spec.format)
        .ok_or_else(|| Error::InvalidArgument(format!("format index {index} is out of range (0..{})", FORMATS.len())))
}

fn backend_at(index: u32) -> Result<Backend> {
    ALL_BACKENDS
        .get(index as usize)
        .copied()
        .ok_or_else(|| Error::InvalidArgument(format!("backend index {index} is out of range (0..{})", ALL_BACKENDS.len())))
}

/// Bytes of a panic's message the [`TrapReport`] keeps.
const PANIC_MESSAGE_BYTES: usize = 1024;

/// What the host reads after a trap, when the module can no longer be called: the size of the
/// allocation that failed (Rust aborts then, and an abort is wasm's `unreachable`, the same
/// trap as a panic's), and the panic's message. The host zeroes `failed_alloc_bytes` and
/// `panic_message_len` before each call; layout: two usizes, then the message's bytes.
#[repr(C)]
pub struct TrapReport {
    failed_alloc_bytes: AtomicUsize,
    panic_message_len: AtomicUsize,
    panic_message: UnsafeCell<[u8; PANIC_MESSAGE_BYTES]>,
}

// SAFETY: `panic_message` is written only by the panic hook, before the trap; nothing in Rust
// reads it.
unsafe impl Sync for TrapReport {}

static TRAP_REPORT: TrapReport =
    TrapReport { failed_alloc_bytes: AtomicUsize::new(0), panic_message_len: AtomicUsize::new(0), panic_message: UnsafeCell::new([0; PANIC_MESSAGE_BYTES]) };

/// The system allocator, noting the size of any allocation it cannot make in the trap report.
struct ReportingAllocator;

// SAFETY: every call is passed to `System` unchanged.
unsafe impl GlobalAlloc for ReportingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        noted(System.alloc(layout), layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        noted(System.alloc_zeroed(layout), layout.size())
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        noted(System.realloc(ptr, layout, new_size), new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn noted(ptr: *mut u8, bytes: usize) -> *mut u8 {
    if ptr.is_null() {
        TRAP_REPORT.failed_alloc_bytes.store(bytes.max(1), Ordering::Relaxed);
    }
    ptr
}

#[global_allocator]
static ALLOCATOR: ReportingAllocator = ReportingAllocator;

/// Writes into the trap report's message, cutting what does not fit.
struct MessageWriter<'a> {
    buffer: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for MessageWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buffer.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buffer[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Installs the panic hook that writes a panic's message into the trap report, and returns
/// the report's address. The host calls it once, after instantiating the module.
#[no_mangle]
pub extern "C" fn binllm_init() -> *const TrapReport {
    std::panic::set_hook(Box::new(|info| {
        // SAFETY: only this hook writes the message, and a panic ends in a trap (panic=abort),
        // so no two hooks run at once on one thread; a second thread's panic may garble it.
        let buffer = unsafe { &mut *TRAP_REPORT.panic_message.get() };
        let mut writer = MessageWriter { buffer, len: 0 };
        let _ = std::fmt::Write::write_fmt(&mut writer, format_args!("{info}"));
        TRAP_REPORT.panic_message_len.store(writer.len, Ordering::Relaxed);
    }));
    &TRAP_REPORT
}

/// Traps on purpose, for the host's tests of trap reports: `kind` 0 panics, 1 allocates GiB
/// after GiB until the memory cannot grow.
#[no_mangle]
pub extern "C" fn binllm_test_trap(kind: u32) {
    if kind == 0 {
        panic!("binllm_test_trap: a panic on purpose");
    }
    if kind == 1 {
        loop {
            std::mem::forget(Vec::<u8>::with_capacity(1 << 30));
        }
    }
}

/// Keeps `e`'s message for `binllm_last_error_*`, prefixed with its kind for the JS error's name.
fn set_error(e: &Error) {
    let kind = match e {
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::Format(_) => "Format",
        Error::Unsupported(_) => "Unsupported",
        Error::Backend(_) => "Backend",
        Error::Io(_) => "Io",
    };
    LAST_ERROR.with(|last| *last.borrow_mut() = format!("{kind}: {e}"));
}

/// 0 on success; -1 after storing the message for `binllm_last_error_*`.
fn status(result: Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            set_error(&e);
            -1
        }
    }
}

/// A slice over caller memory; a zero length never touches the pointer (it may be null).
///
/// Safety: unless `len` is 0, `ptr` must point to `len` initialized values that stay valid
/// and unaliased by writes for `'a`.
pub(crate) unsafe fn slice_at<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

fn layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(len.max(1), ALIGN).ok()
}

/// Allocates `len` bytes aligned to 16; null if the memory cannot grow.
#[no_mangle]
pub extern "C" fn binllm_alloc(len: usize) -> *mut u8 {
    match layout(len) {
        // SAFETY: the layout has a non-zero size.
        Some(l) => unsafe { std::alloc::alloc(l) },
        None => std::ptr::null_mut(),
    }
}

/// Frees a buffer from `binllm_alloc`.
///
/// # Safety
/// `ptr` must come from `binllm_alloc(len)` with the same `len`, and not be freed twice.
#[no_mangle]
pub unsafe extern "C" fn binllm_free(ptr: *mut u8, len: usize) {
    if let (false, Some(l)) = (ptr.is_null(), layout(len)) {
        std::alloc::dealloc(ptr, l)
    }
}

/// Pointer to the last error message (UTF-8, `binllm_last_error_len` bytes).
#[no_mangle]
pub extern "C" fn binllm_last_error_ptr() -> *const u8 {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Length in bytes of the last error message.
#[no_mangle]
pub extern "C" fn binllm_last_error_len() -> usize {
    LAST_ERROR.with(|last| last.borrow().len())
}

/// Threads the kernels use: 1 in builds without threads; in a threaded build, `n` (the host
/// then starts `n - 1` Web Workers that call `binllm_thread_main`). Returns 0, or -1.
#[no_mangle]
pub extern "C" fn binllm_set_threads(n: usize) -> i32 {
    status(binllm_core::threads::set_num_threads(n))
}

/// The threads the kernels use now.
#[no_mangle]
pub extern "C" fn binllm_threads() -> usize {
    binllm_core::threads::num_threads()
}

/// A Web Worker's life as a kernel thread of a threaded build: joins the pool and works until
/// the pool is replaced (`binllm_set_threads`). The host sets this instance's stack pointer
/// and thread-local block first (js/thread.js).
#[no_mangle]
pub extern "C" fn binllm_thread_main() {
    #[cfg(all(feature = "threads", target_arch = "wasm32"))]
    binllm_core::threads::run_worker();
}

/// The relaxed SIMD dot product the kernels use (`kernels::wasm32::simd128::dot_form`): 1 for
/// the i32 form, 2 for the i16 form, 0 in a build without relaxed SIMD.
#[no_mangle]
pub extern "C" fn binllm_dot_form() -> u32 {
    #[cfg(target_arch = "wasm32")]
    return binllm_core::kernels::wasm32::simd128::dot_form().map_or(0, |f| 1 + f as u32);
    #[cfg(not(target_arch = "wasm32"))]
    0
}

/// `binllm_dot_form` by name ("i32", "i16"), for the model's description.
pub(crate) fn dot_form_name() -> Option<&'static str> {
    #[cfg(target_arch = "wasm32")]
    return binllm_core::kernels::wasm32::simd128::dot_form().map(|f| f.name());
    #[cfg(not(target_arch = "wasm32"))]
    None
}

/// Makes the kernels use a dot product form (1 i32, 2 i16; 0: decide from the engine again),
/// so that tests and benchmarks can run both on any engine. 0, or -1 with the error (a build
/// without relaxed SIMD has no form to choose).
#[no_mangle]
pub extern "C" fn binllm_set_dot_form(form: u32) -> i32 {
    status((|| {
        if form > 2 {
            binllm_core::bail!(InvalidArgument, "dot product form {form} is not 0 (decide), 1 (i32) or 2 (i16)");
        }
        #[cfg(target_arch = "wasm32")]
        {
            use binllm_core::kernels::wasm32::simd128::{force_dot_form, DotForm};
            force_dot_form([None, Some(DotForm::I32), Some(DotForm::I16)][form as usize])
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            if form != 0 {
                binllm_core::bail!(Backend, "this build has no relaxed SIMD dot product to choose");
            }
            Ok(())
        }
    })())
}

/// 1 if the backend at `backend` (index into `ALL_BACKENDS`) runs in this build, else 0.
#[no_mangle]
pub extern "C" fn binllm_backend_available(backend: u32) -> i32 {
    backend_at(backend).map(|b| b.is_available() as i32).unwrap_or(0)
}

/// Packed bytes of one row of `k` weights in `format`; 0 for an unknown format.
#[no_mangle]
pub extern "C" fn binllm_row_bytes(format: u32, k: usize) -> usize {
    format_at(format).map(|f| f.row_bytes(k)).unwrap_or(0)
}

/// Packs `n * k` codes (row-major int8) into `format`, writing `n * binllm_row_bytes(format, k)`
/// bytes to `out` (`out_len` must be exactly that).
///
/// # Safety
/// `codes` must hold `n * k` bytes and `out` `out_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn binllm_pack(format: u32, codes: *const i8, n: usize, k: usize, out: *mut u8, out_len: usize) -> i32 {
    status((|| {
        let format = format_at(format)?;
        let len = n.checked_mul(k).ok_or_else(|| Error::InvalidArgument("shape overflows".into()))?;
        let packed = PackedMatrix::pack(format, slice_at(codes, len), n, k, ScaleKind::PerTensor(1.0))?;
        let data = packed.packed_data();
        if data.len() != out_len {
            binllm_core::bail!(InvalidArgument, "output buffer holds {out_len} bytes; the packed matrix needs {}", data.len());
        }
        std::slice::from_raw_parts_mut(out, out_len).copy_from_slice(data);
        Ok(())
    })())
}

/// Exact integer sums `out[r * m + i] = sum_j code[r, j] * x[i, j]` of an (n, k) packed matrix
/// with `m` rows of `k` int8 activations, on the backend at index `backend`.
///
/// # Safety
/// `packed` must hold `packed_len` bytes, `x` `m * k` bytes and `out` `n * m` writable i32s.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn binllm_integer_sums(
    backend: u32,
    format: u32,
    packed: *const u8,
    packed_len: usize,
    n: usize,
    k: usize,
    x: *const i8,
    m: usize,
    out: *mut i32,
) -> i32 {
    status((|| {
        let backend = backend_at(backend)?;
        let format = format_at(format)?;
        let matrix = PackedMatrix::from_packed(format, n, k, slice_at(packed, packed_len).to_vec(), ScaleKind::PerTensor(1.0))?;
        let x_len = m.checked_mul(k).ok_or_else(|| Error::InvalidArgument("shape overflows".into()))?;
        let act = padded_activations(slice_at(x, x_len), m, k, matrix.padded_k());
        let sums = matrix.integer_sums(backend, &act)?;
        std::slice::from_raw_parts_mut(out, sums.len()).copy_from_slice(&sums);
        Ok(())
    })())
}

/// `y (m x n) = x (m x k) W^T` for f16 weights (`w`: n x k values as u16 bits): the kernel
/// models run (`reference` 0: `kernels::float::gemm_f16`, told whether `w` is finite as a
/// model's `Linear::half` tells it) or the scalar reference dot product
/// row by row (`reference` 1), for tests that hold the two equal bit for bit.
///
/// # Safety
/// `w` must hold `n * k` u16s, `x` `m * k` f32s and `y` `m * n` writable f32s.
#[no_mangle]
pub unsafe extern "C" fn binllm_gemm_f16(w: *const u16, n: usize, k: usize, x: *const f32, m: usize, y: *mut f32, reference: i32) -> i32 {
    status((|| {
        let size = |a: usize, b: usize| a.checked_mul(b).ok_or_else(|| Error::InvalidArgument("shape overflows".into()));
        let w: &[half::f16] = slice_at(w as *const half::f16, size(n, k)?);
        let x = slice_at(x, size(m, k)?);
        let y = std::slice::from_raw_parts_mut(y, size(m, n)?);
        if reference == 0 {
            binllm_core::kernels::float::gemm_f16(w, n, k, x, m, y, binllm_core::kernels::float::f16_all_finite(w));
        } else {
            for i in 0..m {
                for r in 0..n {
                    y[i * n + r] = binllm_core::kernels::float::dot_f16_reference(&w[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]);
                }
            }
        }
        Ok(())
    })())
}

/// `y (m x n) = x (m x k) W^T` for Q6_K weights (`w`: n rows of ceil(k / 256) 210-byte
/// blocks): the kernel models run (`reference` 0: `kernels::q6k::gemm`) or the scalar twin row
/// by row (`reference` 1), for tests that hold the two equal bit for bit.
///
/// # Safety
/// `w` must hold `n * ceil(k / 256) * 210` bytes, `x` `m * k` f32s and `y` `m * n` writable f32s.
#[no_mangle]
pub unsafe extern "C" fn binllm_gemm_q6k(w: *const u8, n: usize, k: usize, x: *const f32, m: usize, y: *mut f32, reference: i32) -> i32 {
    use binllm_core::kernels::q6k;
    status((|| {
        let size = |a: usize, b: usize| a.checked_mul(b).ok_or_else(|| Error::InvalidArgument("shape overflows".into()));
        let row_bytes = k.div_ceil(q6k::Q6K_WEIGHTS) * q6k::Q6K_BYTES;
        let w = slice_at(w, size(n, row_bytes)?);
        let x = slice_at(x, size(m, k)?);
        let y = std::slice::from_raw_parts_mut(y, size(m, n)?);
        if reference == 0 {
            q6k::gemm(w, n, k, x, m, y);
        } else {
            let acts = q6k::Q6kActivations::quantize(x, m, k);
            for i in 0..m {
                let (q, d, s) = acts.row(i);
                for r in 0..n {
                    y[i * n + r] = q6k::dot_scalar(&w[r * row_bytes..(r + 1) * row_bytes], q, d, s);
                }
            }
        }
        Ok(())
    })())
}

/// Already quantized activations, zero-padded to the matrix's row length (scales unused).
fn padded_activations(x: &[i8], m: usize, k: usize, padded_k: usize) -> QuantizedActivations {
    let mut q = vec![0i8; m * padded_k];
    for (dst, src) in q.chunks_exact_mut(padded_k).zip(x.chunks_exact(k.max(1))) {
        dst[..k].copy_from_slice(src);
    }
    let sums = x.chunks_exact(k.max(1)).map(|row| row.iter().map(|&v| v as i32).sum()).collect();
    QuantizedActivations { q, scales: vec![1.0; m], sums, m, padded_k }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_sums_match_a_direct_sum_on_the_host() {
        let (n, k, m) = (3, 17, 2);
        let codes: Vec<i8> = (0..n * k).map(|i| (i % 3) as i8 - 1).collect();
        let x: Vec<i8> = (0..m * k).map(|i| (i as i32 * 37 % 256 - 128) as i8).collect();
        let row_bytes = binllm_row_bytes(0, k);
        let mut packed = vec![0u8; n * row_bytes];
        let mut out = vec![0i32; n * m];
        unsafe {
            assert_eq!(binllm_pack(0, codes.as_ptr(), n, k, packed.as_mut_ptr(), packed.len()), 0);
            assert_eq!(binllm_integer_sums(0, 0, packed.as_ptr(), packed.len(), n, k, x.as_ptr(), m, out.as_mut_ptr()), 0);
        }
        for r in 0..n {
            for i in 0..m {
                let want: i32 = (0..k).map(|j| codes[r * k + j] as i32 * x[i * k + j] as i32).sum();
                assert_eq!(out[r * m + i], want);
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_with_messages() {
        let mut out = [0u8; 1];
        let status = unsafe { binllm_pack(7, [0i8].as_ptr(), 1, 1, out.as_mut_ptr(), 1) };
        assert_eq!(status, -1);
        let message = unsafe { std::str::from_utf8(slice_at(binllm_last_error_ptr(), binllm_last_error_len())).unwrap() };
        assert!(message.contains("format index 7"), "{message}");
        assert_eq!(binllm_backend_available(99), 0);
        // No relaxed SIMD on the host: nothing to choose, and "decide" is fine.
        assert_eq!(binllm_dot_form(), 0);
        assert_eq!(binllm_set_dot_form(0), 0);
        assert_eq!(binllm_set_dot_form(2), -1);
        assert_eq!(binllm_set_dot_form(3), -1);
    }
}
