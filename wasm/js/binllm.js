// binllm in the browser: the page-side API. Every call is a message to a Web Worker
// (js/worker.js) that owns the WebAssembly engine, so loading and generating never block the
// page.
//
//   import { BinLLM } from "binllm-wasm";
//   const model = await BinLLM.load("model.gguf", { onProgress: ({ phase, loaded, total }) => {} });
//   const { text } = await model.generate("The capital of France is", { maxNewTokens: 32, onToken: (piece) => {} });
//
// A source is a URL (of a .gguf file, or of a Hugging Face folder when it ends in '/'), a
// File/Blob or an ArrayBuffer of a GGUF file, or {files: File[]} (a picked folder). Downloads
// are kept in the Cache API, so a reload does not fetch the model again.

// The one error class, the engine's: errors from the worker and from here are all instances of it.
import { BinLLMError, MAX_GGUF_FILE_BYTES, checkLoadOptionNames } from "./engine.js";
export { BinLLMError };

const SIMD128_WASM = new URL("../pkg/binllm_wasm.wasm", import.meta.url).href;
const RELAXED_WASM = new URL("../pkg/binllm_wasm_relaxed.wasm", import.meta.url).href;
const RELAXED_THREADS_WASM = new URL("../pkg/binllm_wasm_relaxed_threads.wasm", import.meta.url).href;

// Relaxed SIMD's two dot products on operands whose result the standard fixes (the second
// operand's bytes in 0..127, no 16-bit pair sum past i16): a = [-128, -1, 100, -50, 0...],
// b = [127, 3, 1, 3, 0...]. Lane 0 of i16x8.relaxed_dot_i8x16_i7x16_s is -128*127 - 1*3 =
// -16259; of i32x4.relaxed_dot_i8x16_i7x16_add_s (added to zeros) -16259 + 100 - 150 = -16309.
// An engine that validates relaxed SIMD but computes these otherwise (node 20's experimental
// V8 behind --experimental-wasm-relaxed-simd reads the signed operand as unsigned: 17739) would
// run binllm's ternary kernels wrong, so it gets the SIMD128 module.
const PROBE_A = [0x80, 0xff, 100, 0xce, ...new Array(12).fill(0)];
const PROBE_B = [127, 3, 1, 3, ...new Array(12).fill(0)];
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // types: () -> i32
  0x03, 0x03, 0x02, 0x00, 0x00, // functions: two of type 0
  0x07, 0x09, 0x02, 0x01, 0x61, 0x00, 0x00, 0x01, 0x62, 0x00, 0x01, // exports "a" (0) and "b" (1)
  0x0a, 0x6d, 0x02, // code: two bodies
  0x3e, 0x00, // "a": 62 bytes, no locals
  0xfd, 0x0c, ...PROBE_A, 0xfd, 0x0c, ...PROBE_B, 0xfd, 0x0c, ...new Array(16).fill(0), // v128.const a, b, 0
  0xfd, 0x93, 0x02, 0xfd, 0x1b, 0x00, 0x0b, // i32x4.relaxed_dot_i8x16_i7x16_add_s; i32x4.extract_lane 0; end
  0x2c, 0x00, // "b": 44 bytes, no locals
  0xfd, 0x0c, ...PROBE_A, 0xfd, 0x0c, ...PROBE_B, // v128.const a, b
  0xfd, 0x92, 0x02, 0xfd, 0x18, 0x00, 0x0b, // i16x8.relaxed_dot_i8x16_i7x16_s; i16x8.extract_lane_s 0; end
]);

/**
 * Whether this engine runs relaxed SIMD, and runs its dot products as the standard says
 * (binllm then loads its relaxed-SIMD build).
 */
export function hasRelaxedSimd() {
  try {
    if (!WebAssembly.validate(RELAXED_PROBE)) return false;
    const { a, b } = new WebAssembly.Instance(new WebAssembly.Module(RELAXED_PROBE)).exports;
    return a() === -16309 && b() === -16259;
  } catch {
    return false;
  }
}

/**
 * Whether this page can run the threaded module: SharedArrayBuffer, which browsers give only to
 * cross-origin isolated pages (served with `Cross-Origin-Opener-Policy: same-origin` and
 * `Cross-Origin-Embedder-Policy: require-corp`), and relaxed SIMD (the threaded build has it).
 */
export function canUseThreads() {
  return typeof SharedArrayBuffer !== "undefined" && globalThis.crossOriginIsolated === true && hasRelaxedSimd();
}

/** Threads `BinLLM.load` uses by default: every core (at most 8) where threads can run, else 1. */
export function defaultThreads() {
  return canUseThreads() ? Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 8)) : 1;
}

/**
 * The module `BinLLM.load` uses: the threaded one for more than one thread (where the page can
 * run it), else relaxed SIMD where the engine has it, else SIMD128.
 */
export function defaultWasmUrl(threads = defaultThreads()) {
  if (threads > 1 && canUseThreads()) return RELAXED_THREADS_WASM;
  return hasRelaxedSimd() ? RELAXED_WASM : SIMD128_WASM;
}

// The largest GGUF file the browser build loads (js/engine.js holds the reasons).
export { MAX_GGUF_FILE_BYTES };

/**
 * About how much wasm memory a GGUF file of `fileBytes` takes once loaded: ternary (TQ2_0,
 * TQ1_0, I2_S) and f16 tensors unpack to about their size in the file (measured: a 1.14 GiB
 * 2B4T-shaped TQ2_0 file loads in 1.20 GiB), plus the largest tensor read at a time and buffers.
 * Q6_K tensors stay Q6_K; files with other 4- to 5-bit float tensors (Q4_0, Q5_K, ...) take more:
 * those become 8-bit. An `outputType` smaller than the file's output layer takes less.
 */
export function memoryEstimate(fileBytes) {
  return Math.ceil(fileBytes * 1.05) + 64 * 2 ** 20;
}

export class BinLLM {
  /**
   * Loads a model in a new worker. Options: onProgress({phase, loaded, total}) with phase
   * "size" (a GGUF file's size in total, before it is read; `memoryEstimate(total)` is what it
   * will take) | "download" | "cache" | "read" | "parse"; cache (default true); wasmUrl;
   * workerUrl; threads (default `defaultThreads()`: the cores, where `canUseThreads()`; a
   * single-threaded module otherwise). How the model is stored, as Python's `from_pretrained`
   * names it: outputType ("f32" | "f16" | "q8_0" | "q6_k": the output layer, or the embedding
   * matrix when they are tied, re-stored as it is read: "q6_k" holds a 2B4T-shaped model's f16
   * output in 0.27 GB instead of 0.66 GB and reads that much less a token), ternaryFormat ("t2" |
   * "t1.6"), kvType ("f16" | "f32"); each defaults to what the file holds (f16 caches). GGUF
   * files over `MAX_GGUF_FILE_BYTES` are refused (TooLarge) before download; an unknown option
   * is an InvalidArgument error.
   */
  static async load(
    source,
    { onProgress, cache = true, threads = defaultThreads(), wasmUrl = defaultWasmUrl(threads), workerUrl, ...load } = {},
  ) {
    checkLoadOptionNames(load); // here, before a function or the like meets postMessage
    const worker = new Worker(workerUrl ?? new URL("./worker.js", import.meta.url), { type: "module" });
    const model = new BinLLM(worker);
    if (typeof source === "string") source = new URL(source, globalThis.location?.href).href;
    else if (source instanceof URL) source = source.href;
    try {
      model._info = await model._request({ type: "load", source, options: { cache, wasmUrl, threads, load } }, { onProgress });
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return model;
  }

  constructor(worker) {
    this._worker = worker;
    this._pending = new Map();
    this._nextId = 1;
    this._queue = Promise.resolve();
    worker.onmessage = ({ data }) => this._receive(data);
    // A worker that dies (a script error, a crash) fails every pending call instead of hanging.
    worker.onerror = (event) => {
      event.preventDefault?.();
      this._failAll(new BinLLMError(`the binllm worker failed: ${event.message ?? "unknown error"}`, "WorkerError"));
    };
    worker.onmessageerror = () => this._failAll(new BinLLMError("the binllm worker sent an unreadable message", "WorkerError"));
  }

  _failAll(error) {
    for (const { reject } of this._pending.values()) reject(error);
    this._pending.clear();
  }

  _receive(data) {
    const call = this._pending.get(data.id);
    if (!call) return;
    if (data.type === "progress") call.onProgress?.({ phase: data.phase, loaded: data.loaded, total: data.total });
    else if (data.type === "token") call.onToken?.(data.piece, data);
    else if (data.type === "result") {
      this._pending.delete(data.id);
      call.resolve(data.value);
    } else if (data.type === "error") {
      this._pending.delete(data.id);
      call.reject(new BinLLMError(data.message, data.name));
    }
  }

  /** Sends one request; requests run one after another. */
  _request(message, callbacks = {}) {
    const run = () =>
      new Promise((resolve, reject) => {
        if (!this._worker) return reject(new BinLLMError("this model was disposed", "InvalidArgument"));
        const id = this._nextId++;
        this._pending.set(id, { resolve, reject, ...callbacks });
        this._worker.postMessage({ ...message, id });
      });
    const result = this._queue.then(run, run);
    this._queue = result.catch(() => {});
    return result;
  }

  /** Architecture, sizes, EOS ids, weight bytes, memory in use at load. */
  info() {
    return { ...this._info };
  }

  /**
   * Generates a continuation of `prompt`, with the options of Python's `binllm.Model.generate`:
   * maxNewTokens (default 128); temperature (default 0: greedy), topK (0: off), topP (1: off),
   * minP (0: off), repetitionPenalty (1: off), seed (0); stop (a string or a list: the text
   * ends before the first one, which is not included). onToken(piece, stats) receives text as
   * it is decoded. Resolves to {text, stopped, finishReason, finishDetail, tokens, promptTokens,
   * promptMs, decodeMs, tokensPerSecond, memoryBytes}: finishReason "stop" (finishDetail "eos"
   * or "stop_string") or "length" ("max_tokens" or "context"), null after `stop()`.
   */
  generate(prompt, { maxNewTokens = 128, temperature = 0, topK = 0, topP = 1, minP = 0, repetitionPenalty = 1, seed = 0, stop, onToken } = {}) {
    if (typeof prompt !== "string") return Promise.reject(new BinLLMError("prompt must be a string", "InvalidArgument"));
    const options = { maxNewTokens, temperature, topK, topP, minP, repetitionPenalty, seed, stop };
    return this._request({ type: "generate", prompt, options }, { onToken });
  }

  /** Stops the generation in progress after its current token; its text is then what
   * maxNewTokens of the tokens generated would give (half a character held back comes out as U+FFFD). */
  stop() {
    this._worker?.postMessage({ type: "stop" });
  }

  tokenize(text, { addSpecialTokens = true } = {}) {
    return this._request({ type: "tokenize", text, addSpecial: addSpecialTokens });
  }

  detokenize(ids, { skipSpecialTokens = true } = {}) {
    return this._request({ type: "decode", ids: Array.from(ids), skipSpecial: skipSpecialTokens });
  }

  /**
   * Teacher-forced logits of token `ids` from position 0, as `binllm.Model.logits` computes them
   * natively: a Float32Array of ids.length x vocab values (row-major), or vocab values for the
   * last position with {all: false}.
   */
  logits(ids, { all = true } = {}) {
    return this._request({ type: "logits", ids: Array.from(ids), all });
  }

  /** Prompt and decode tokens/s on random token ids (the model's threads), best of `repeats`. */
  bench({ promptTokens = 128, decodeTokens = 64, repeats = 3 } = {}) {
    return this._request({ type: "bench", promptTokens, decodeTokens, repeats });
  }

  /** Ends the worker and frees the model's memory. */
  dispose() {
    this._worker?.terminate();
    this._worker = null;
    this._failAll(new BinLLMError("this model was disposed", "InvalidArgument"));
  }
}

export default BinLLM;
