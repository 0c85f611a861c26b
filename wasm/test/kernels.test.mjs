// The wasm kernels against each other and against a plain JS sum: Simd128 must equal Scalar
// bit-exact, and both must equal sum(code * x) computed here from the codes, for every format
// on seeded random shapes (odd K, N and M included). Build first: scripts/build-wasm.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

// BINLLM_WASM_MODULE names another of pkg/'s modules (binllm_wasm_relaxed.wasm, whose Simd128
// kernels use relaxed SIMD's dot product; node 20 runs it with --experimental-wasm-relaxed-simd).
const WASM = new URL(`../pkg/${process.env.BINLLM_WASM_MODULE || "binllm_wasm.wasm"}`, import.meta.url);
// Indices into binllm_core's FORMATS and ALL_BACKENDS (see wasm/src/lib.rs).
const FORMATS = [
  { index: 0, name: "t2", ternary: true },
  { index: 1, name: "t1.6", ternary: true },
  { index: 2, name: "b1", ternary: false },
];
const SCALAR = 0;
const SIMD128 = 1;

// The module imports the host's file reader (lazy GGUF loads); these tests read no file.
const { instance } = await WebAssembly.instantiate(await readFile(WASM), { binllm_host: { read_file: () => -1 } });
const wasm = instance.exports;

// xorshift32: the same seed gives the same cases on every run.
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

function lastError() {
  const bytes = new Uint8Array(wasm.memory.buffer, wasm.binllm_last_error_ptr(), wasm.binllm_last_error_len());
  return new TextDecoder().decode(bytes);
}

// Copies `array` into a fresh wasm buffer; returns [pointer, byte length].
function put(array) {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  const ptr = wasm.binllm_alloc(bytes.length);
  assert.notEqual(ptr, 0, "binllm_alloc failed");
  new Uint8Array(wasm.memory.buffer, ptr, bytes.length).set(bytes);
  return [ptr, bytes.length];
}

function pack(format, codes, n, k) {
  const len = n * wasm.binllm_row_bytes(format.index, k);
  const [codesPtr, codesLen] = put(codes);
  const outPtr = wasm.binllm_alloc(len);
  try {
    assert.equal(wasm.binllm_pack(format.index, codesPtr, n, k, outPtr, len), 0, lastError());
    return new Uint8Array(wasm.memory.buffer, outPtr, len).slice();
  } finally {
    wasm.binllm_free(codesPtr, codesLen);
    wasm.binllm_free(outPtr, len);
  }
}

function integerSums(backend, format, packed, n, k, x, m) {
  const [packedPtr, packedLen] = put(packed);
  const [xPtr, xLen] = put(x);
  const outLen = 4 * n * m;
  const outPtr = wasm.binllm_alloc(outLen);
  try {
    const status = wasm.binllm_integer_sums(backend, format.index, packedPtr, packedLen, n, k, xPtr, m, outPtr);
    assert.equal(status, 0, lastError());
    return new Int32Array(wasm.memory.buffer, outPtr, n * m).slice();
  } finally {
    wasm.binllm_free(packedPtr, packedLen);
    wasm.binllm_free(xPtr, xLen);
    wasm.binllm_free(outPtr, outLen);
  }
}

function randomCase(format, n, k, m, next) {
  const codes = new Int8Array(n * k);
  for (let i = 0; i < codes.length; i++) {
    codes[i] = format.ternary ? (next() % 3) - 1 : next() % 2 ? 1 : -1;
  }
  // Activations span all of int8; some rows sit at the extremes -128 and 127.
  const x = new Int8Array(m * k);
  for (let i = 0; i < m; i++) {
    const extreme = next() % 4 === 0;
    for (let j = 0; j < k; j++) {
      x[i * k + j] = extreme ? (next() % 2 ? 127 : -128) : (next() % 256) - 128;
    }
  }
  return { codes, x };
}

// out[r * m + i] = sum_j code[r, j] * x[i, j], straight from the codes.
function directSums(codes, x, n, k, m) {
  const out = new Int32Array(n * m);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < m; i++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += codes[r * k + j] * x[i * k + j];
      out[r * m + i] = s;
    }
  }
  return out;
}

// The relaxed module's kernels run in either dot product form (1 i32, 2 i16; it picks one from
// the engine); both are checked here. The SIMD128 module has none (binllm_dot_form() is 0).
const DOT_FORMS = wasm.binllm_dot_form() === 0 ? [0] : [1, 2];

/** Simd128's sums in every dot product form; they must all be equal. */
function simdSums(format, packed, n, k, x, m) {
  const results = DOT_FORMS.map((form) => {
    assert.equal(wasm.binllm_set_dot_form(form), 0, lastError());
    return integerSums(SIMD128, format, packed, n, k, x, m);
  });
  wasm.binllm_set_dot_form(0);
  for (const r of results.slice(1)) assert.deepEqual(r, results[0], `dot product forms differ, ${format.name} n=${n} k=${k} m=${m}`);
  return results[0];
}

function check(format, n, k, m, next) {
  const { codes, x } = randomCase(format, n, k, m, next);
  const packed = pack(format, codes, n, k);
  const want = directSums(codes, x, n, k, m);
  const scalar = integerSums(SCALAR, format, packed, n, k, x, m);
  const simd = simdSums(format, packed, n, k, x, m);
  const where = `${format.name} n=${n} k=${k} m=${m}`;
  assert.deepEqual(scalar, want, `scalar vs JS sum, ${where}`);
  assert.deepEqual(simd, scalar, `simd128 vs scalar, ${where}`);
}

test("the module was built with SIMD128", () => {
  assert.equal(wasm.binllm_backend_available(SCALAR), 1);
  assert.equal(wasm.binllm_backend_available(SIMD128), 1, "rebuild with scripts/build-wasm.sh (+simd128)");
});

for (const format of FORMATS) {
  test(`simd128 == scalar == JS sum, ${format.name}, odd shapes`, () => {
    const next = rng(0x5eed + format.index);
    for (const k of [1, 17, 255, 321, 1023, 2560]) {
      for (const n of [1, 3, 17]) {
        for (const m of [1, 3, 17]) check(format, n, k, m, next);
      }
    }
  });

  test(`simd128 == scalar == JS sum, ${format.name}, random shapes`, () => {
    const next = rng(0xb1b1 + format.index);
    for (let t = 0; t < 25; t++) {
      check(format, 1 + (next() % 40), 1 + (next() % 3000), 1 + (next() % 9), next);
    }
  });
}

test("extreme codes and activations (the i16 partial sums' worst case) stay exact", () => {
  const n = 5, k = 1537, m = 3;
  for (const format of FORMATS) {
    for (const code of [-1, 1]) {
      for (const value of [-128, 127]) {
        const codes = new Int8Array(n * k).fill(code);
        const x = new Int8Array(m * k).fill(value);
        const packed = pack(format, codes, n, k);
        const want = new Int32Array(n * m).fill(code * value * k);
        assert.deepEqual(simdSums(format, packed, n, k, x, m), want, `${format.name} ${code} x ${value}`);
        assert.deepEqual(integerSums(SCALAR, format, packed, n, k, x, m), want, `${format.name} ${code} x ${value}`);
      }
    }
  }
});

test("a t1.6 block holding every trit pattern decodes exactly", () => {
  // Byte j of a t1.6 block holds weights j + 64p; 243 patterns over 4 rows cover them all.
  const format = FORMATS[1];
  const n = 4, k = 320, m = 5;
  const codes = new Int8Array(n * k);
  for (let v = 0; v < n * 64; v++) {
    const pattern = v % 243;
    const [r, j] = [Math.floor(v / 64), v % 64];
    for (let p = 0, rest = pattern; p < 5; p++, rest = Math.floor(rest / 3)) {
      codes[r * k + j + 64 * (4 - p)] = (rest % 3) - 1;
    }
  }
  const next = rng(243);
  const x = new Int8Array(m * k).map(() => (next() % 256) - 128);
  const packed = pack(format, codes, n, k);
  assert.deepEqual(integerSums(SIMD128, format, packed, n, k, x, m), directSums(codes, x, n, k, m));
});

test("bad arguments are errors with a message, not traps", () => {
  const ptr = wasm.binllm_alloc(4);
  try {
    assert.equal(wasm.binllm_pack(7, ptr, 1, 1, ptr, 4), -1);
    assert.match(lastError(), /format index 7/);
    // 1 x 17 t2 needs 64 packed bytes, not 4.
    assert.equal(wasm.binllm_integer_sums(SCALAR, 0, ptr, 4, 1, 17, ptr, 0, ptr), -1);
    assert.match(lastError(), /must be 64 bytes/);
    assert.equal(wasm.binllm_set_dot_form(3), -1);
    assert.match(lastError(), /dot product form 3 is not/);
    if (DOT_FORMS[0] === 0) {
      assert.equal(wasm.binllm_set_dot_form(2), -1);
      assert.match(lastError(), /no relaxed SIMD dot product/);
    }
  } finally {
    wasm.binllm_free(ptr, 4);
  }
});

// The f16 matrix product models run (the output layer of a tied model) against the scalar
// reference dot product, bit for bit: normal, subnormal, zero, infinite and NaN weights, small
// and large activations.
test("f16 gemm equals the scalar reference bit for bit", () => {
  const next = rng(77);
  const shapes = [[1, 1, 1], [3, 17, 1], [5, 127, 2], [7, 1023, 1], [4, 2560, 3], [2, 33, 1], [9, 48, 2]];
  let cases = 0;
  for (const special of [false, true]) {
    for (const big of [false, true]) {
      for (const [n, k, m] of shapes) {
        const w = new Uint16Array(n * k);
        for (let i = 0; i < w.length; i++) {
          const r = next() % 100;
          const sign = (next() & 1) << 15;
          const exponent = r < 10 ? 0 : special && r < 12 ? 31 : 1 + (next() % 30);
          w[i] = sign | (exponent << 10) | (next() & 0x3ff);
        }
        const x = new Float32Array(m * k);
        for (let i = 0; i < x.length; i++) x[i] = ((next() % 20001) / 10000 - 1) * (big && i === 0 ? 1e5 : 8);
        // Infinite activations (exact through wasm's 2^112 scaling of x; 1e5 is beyond it).
        if (special && !big && x.length > 3) x[3] = -Infinity;
        const [wp] = put(w);
        const [xp] = put(x);
        const out = [0, 1].map((reference) => {
          const yp = wasm.binllm_alloc(4 * m * n);
          assert.equal(wasm.binllm_gemm_f16(wp, n, k, xp, m, yp, reference), 0, lastError());
          // wasm leaves a NaN's payload to the engine: every NaN reads as one value.
          return Array.from(new Uint32Array(wasm.memory.buffer, yp, m * n), (b) => ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff ? "NaN" : b));
        });
        assert.deepEqual(out[0], out[1], `n ${n} k ${k} m ${m} special ${special} big ${big}`);
        cases++;
      }
    }
  }
  assert.equal(cases, 28);
});

// The Q6_K matrix product (a Q6_K output layer) against its scalar twin, bit for bit: random
// blocks (every byte random but the f16 block scale), rows of whole and partial blocks.
test("q6_k gemm equals the scalar twin bit for bit", () => {
  const next = rng(91);
  let cases = 0;
  for (const [n, k, m] of [[1, 256, 1], [3, 512, 1], [5, 576, 2], [4, 2560, 3], [2, 100, 1]]) {
    const blocks = Math.ceil(k / 256);
    const w = new Uint8Array(n * blocks * 210);
    for (let i = 0; i < w.length; i++) w[i] = next() & 0xff;
    for (let b = 0; b < n * blocks; b++) {
      // An f16 scale between 2^-14 and 2^-7 (finite, normal).
      const bits = ((1 + (next() % 8)) << 10) | (next() & 0x3ff);
      w[b * 210 + 208] = bits & 0xff;
      w[b * 210 + 209] = bits >> 8;
    }
    const x = new Float32Array(m * k);
    for (let i = 0; i < x.length; i++) x[i] = ((next() % 20001) / 10000 - 1) * 4;
    const [wp] = put(w);
    const [xp] = put(x);
    const out = [0, 1].map((reference) => {
      const yp = wasm.binllm_alloc(4 * m * n);
      assert.equal(wasm.binllm_gemm_q6k(wp, n, k, xp, m, yp, reference), 0, lastError());
      return Array.from(new Uint32Array(wasm.memory.buffer, yp, m * n));
    });
    assert.deepEqual(out[0], out[1], `n ${n} k ${k} m ${m}`);
    assert.ok(out[0].some((b) => b !== 0));
    cases++;
  }
  assert.equal(cases, 5);
});
