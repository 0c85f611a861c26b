// The synchronous layer over binllm_wasm.wasm: memory in and out, errors, models, tokens and
// one-token-at-a-time generation. It runs wherever WebAssembly does (a Web Worker, node); the
// page never calls it directly (js/binllm.js talks to js/worker.js, which owns an Engine).
//
// Pointers and sizes cross the boundary as wasm32 i32s: values at or above 2 GiB come back
// negative and are read with `>>> 0`.

/** A wasm32 memory holds at most 4 GiB; the file and the unpacked model must fit together. */
export const MAX_MODEL_FILE_BYTES = 2 ** 31 - 2 ** 26;

export class BinLLMError extends Error {
  constructor(message, name = "BinLLMError") {
    super(message);
    this.name = name;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function formatBytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/** A block of bytes inside wasm memory that a file is streamed into. */
export class WasmBuffer {
  constructor(engine, size) {
    this.engine = engine;
    this.size = size;
    this.ptr = engine.alloc(size);
    this.filled = 0;
  }
  /** Appends `chunk` (Uint8Array). */
  write(chunk) {
    if (this.filled + chunk.length > this.size) {
      throw new BinLLMError(`the file is longer than its declared ${this.size} bytes`, "Format");
    }
    new Uint8Array(this.engine.memory.buffer, this.ptr + this.filled, chunk.length).set(chunk);
    this.filled += chunk.length;
  }
  free() {
    if (this.ptr) this.engine.exports.binllm_free(this.ptr, this.size);
    this.ptr = 0;
  }
}

export class Engine {
  /** `wasm`: the module's bytes, a URL, or a compiled WebAssembly.Module. */
  static async create(wasm) {
    let module;
    if (wasm instanceof WebAssembly.Module) module = wasm;
    else if (wasm instanceof ArrayBuffer || ArrayBuffer.isView(wasm)) module = await WebAssembly.compile(wasm);
    else {
      const response = await fetch(wasm);
      if (!response.ok) throw new BinLLMError(`cannot fetch ${wasm}: HTTP ${response.status}`, "Io");
      module = await WebAssembly.compile(await response.arrayBuffer());
    }
    const instance = await WebAssembly.instantiate(module, {});
    return new Engine(instance);
  }

  constructor(instance) {
    this.exports = instance.exports;
    this.memory = instance.exports.memory;
    if (this.exports.binllm_backend_available(1) !== 1) {
      throw new BinLLMError("this browser runs WebAssembly without SIMD128, which binllm's build needs", "Backend");
    }
  }

  /** Bytes of wasm memory in use (it only grows). */
  memoryBytes() {
    return this.memory.buffer.byteLength;
  }

  lastError() {
    const e = this.exports;
    const text = decoder.decode(new Uint8Array(this.memory.buffer, e.binllm_last_error_ptr() >>> 0, e.binllm_last_error_len() >>> 0));
    const colon = text.indexOf(": ");
    return colon > 0 ? new BinLLMError(text.slice(colon + 2), text.slice(0, colon)) : new BinLLMError(text);
  }

  resultBytes() {
    const e = this.exports;
    return new Uint8Array(this.memory.buffer, e.binllm_result_ptr() >>> 0, e.binllm_result_len() >>> 0);
  }

  resultText() {
    return decoder.decode(this.resultBytes());
  }

  /** Runs a wasm call; a trap (out of memory, a bug) becomes a BinLLMError that says so. */
  call(what, fn) {
    let status;
    try {
      status = fn();
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) {
        throw new BinLLMError(
          `${what} stopped: ${e.message}. Most likely the model needs more memory than this ` +
            `tab can give (the wasm32 build holds at most 4 GiB; in use: ${formatBytes(this.memoryBytes())}).`,
          "OutOfMemory",
        );
      }
      throw e;
    }
    if (status < 0) throw this.lastError();
    return status;
  }

  alloc(size) {
    const ptr = this.exports.binllm_alloc(size) >>> 0;
    if (ptr === 0) {
      throw new BinLLMError(
        `cannot reserve ${formatBytes(size)} of WebAssembly memory (in use: ${formatBytes(this.memoryBytes())}; ` +
          `the wasm32 build holds at most 4 GiB and browsers may give less)`,
        "OutOfMemory",
      );
    }
    return ptr;
  }

  /** Copies bytes (or a string's UTF-8) into fresh wasm memory; returns [ptr, len]. */
  put(data) {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    const ptr = this.alloc(bytes.length);
    new Uint8Array(this.memory.buffer, ptr, bytes.length).set(bytes);
    return [ptr, bytes.length];
  }

  withBytes(data, fn) {
    const [ptr, len] = this.put(data);
    try {
      return fn(ptr, len);
    } finally {
      this.exports.binllm_free(ptr, len);
    }
  }

  /** A WasmBuffer for a model file of `size` bytes, after checking it can fit at all. */
  reserveModelFile(size, name = "the model file") {
    if (size > MAX_MODEL_FILE_BYTES) {
      throw new BinLLMError(
        `${name} is ${formatBytes(size)}: too large for the browser build, whose 4 GiB of wasm32 memory must hold ` +
          `the file and the model unpacked from it (files up to ${formatBytes(MAX_MODEL_FILE_BYTES)} can load)`,
        "TooLarge",
      );
    }
    return new WasmBuffer(this, size);
  }

  /** A model from a filled WasmBuffer holding a GGUF file; the buffer is freed. */
  loadGguf(buffer) {
    try {
      if (buffer.filled !== buffer.size) throw new BinLLMError(`the file ended after ${buffer.filled} of ${buffer.size} bytes`, "Format");
      return this.call("loading the model", () => this.exports.binllm_model_load_gguf(buffer.ptr, buffer.size));
    } finally {
      buffer.free();
    }
  }

  /**
   * A model from a Hugging Face folder's files: `json` maps config.json, tokenizer.json,
   * generation_config.json, tokenizer_config.json to their text (the last two may be missing);
   * `weights` are filled WasmBuffers of safetensors files, freed here.
   */
  loadHf(json, weights) {
    const texts = ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"].map((n) => json[n] ?? "");
    const placed = texts.map((t) => this.put(t));
    const table = new Uint32Array(weights.flatMap((w) => [w.ptr, w.size]));
    try {
      return this.withBytes(new Uint8Array(table.buffer), (tablePtr) =>
        this.call("loading the model", () => this.exports.binllm_model_load_hf(...placed.flat(), tablePtr, weights.length)),
      );
    } finally {
      placed.forEach(([p, l]) => this.exports.binllm_free(p, l));
      weights.forEach((w) => w.free());
    }
  }

  freeModel(handle) {
    this.exports.binllm_model_free(handle);
  }

  info(handle) {
    this.call("info", () => this.exports.binllm_model_info(handle));
    return JSON.parse(this.resultText());
  }

  /** Token ids of `text` (with the special tokens the model's tokenizer adds, by default). */
  encode(handle, text, addSpecial = true) {
    const n = this.withBytes(text, (p, l) => this.call("tokenizing", () => this.exports.binllm_encode(handle, p, l, addSpecial ? 1 : 0)));
    const bytes = this.resultBytes();
    return Array.from(new Uint32Array(bytes.slice().buffer, 0, n));
  }

  decode(handle, ids, skipSpecial = true) {
    const bytes = new Uint8Array(new Uint32Array(ids).buffer);
    this.withBytes(bytes, (p) => this.call("decoding", () => this.exports.binllm_decode(handle, p, ids.length, skipSpecial ? 1 : 0)));
    return this.resultText();
  }

  /** Tokenizes and runs the prompt; returns its token count. */
  generateStart(handle, prompt, { maxNewTokens = 128, temperature = 0, topK = 0, topP = 1, seed = 0 } = {}) {
    for (const [name, v] of Object.entries({ maxNewTokens, topK, seed })) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new BinLLMError(`${name} must be a non-negative integer, got ${v}`, "InvalidArgument");
    }
    return this.withBytes(prompt, (p, l) =>
      this.call("reading the prompt", () => this.exports.binllm_generate_start(handle, p, l, maxNewTokens, temperature, topK, topP, seed)),
    );
  }

  /** One token: {added, done, piece}. */
  generateStep(handle) {
    const status = this.call("generating", () => this.exports.binllm_generate_step(handle));
    return { added: status === 1 || status === 2, done: status !== 1, piece: this.resultText() };
  }

  /** Benchmarks: a fresh cache, then forward passes that return the argmax token. */
  forwardReset(handle, capacity) {
    this.call("forward", () => this.exports.binllm_forward_reset(handle, capacity));
  }

  forwardArgmax(handle, ids) {
    const bytes = new Uint8Array(new Uint32Array(ids).buffer);
    return this.withBytes(bytes, (p) => this.call("forward", () => this.exports.binllm_forward_argmax(handle, p, ids.length)));
  }
}
