// The synchronous layer over binllm_wasm.wasm: memory in and out, errors, models, tokens and
// one-token-at-a-time generation. It runs wherever WebAssembly does (a Web Worker, node); the
// page never calls it directly (js/binllm.js talks to js/worker.js, which owns an Engine).
//
// Pointers and sizes cross the boundary as wasm32 i32s: values at or above 2 GiB come back
// negative and are read with `>>> 0`; a JS number passed as one wraps modulo 2^32, so every
// size and token id is checked here first (`wasmSize`, `idBytes`).

/**
 * A wasm32 memory holds at most 4 GiB. Files that must be in wasm memory whole (safetensors)
 * share it with the model unpacked from them; GGUF files are read tensor by tensor from outside
 * wasm memory (`loadGgufFrom`), so only the model (about the file's size for ternary and f16
 * tensors) and one tensor's bytes must fit.
 */
export const MAX_MODEL_FILE_BYTES = 2 ** 31 - 2 ** 26;
export const MAX_GGUF_FILE_BYTES = 2 ** 31 + 2 ** 30 + 2 ** 28;

/** Bytes of a GGUF file read first for its header; doubled while the header runs past it, up
 * to the most a header may take here (Llama 3's 128256-token vocabulary takes about 8 MiB). */
const GGUF_HEADER_BYTES = 16 * 2 ** 20;
const MAX_GGUF_HEADER_BYTES = 256 * 2 ** 20;
/** The largest single read from a lazy source (a big tensor is read in pieces this size). */
const READ_PIECE_BYTES = 16 * 2 ** 20;

export class BinLLMError extends Error {
  constructor(message, name = "BinLLMError") {
    super(message);
    this.name = name;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `n` as a wasm32 size (0 to 2^32 - 1), which would wrap modulo 2^32 at the boundary. */
function wasmSize(what, n) {
  if (!(Number.isSafeInteger(n) && n >= 0 && n < 2 ** 32)) {
    throw new BinLLMError(`${what} must be a whole number from 0 to 2^32 - 1, got ${n}`, "InvalidArgument");
  }
  return n;
}

/** Token ids as the little-endian u32s the module reads; an id out of u32's range would wrap. */
function idBytes(ids) {
  const out = new Uint32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(Number.isInteger(id) && id >= 0 && id < 2 ** 32)) throw new BinLLMError(`token id ${id} is not a whole number from 0 to 2^32 - 1`, "InvalidArgument");
    out[i] = id;
  }
  return new Uint8Array(out.buffer);
}

export function formatBytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/** A block of bytes inside wasm memory that a file is streamed into. */
export class WasmBuffer {
  /** `name` (the file's, or null) is what errors about its bytes name. */
  constructor(engine, size, name = null) {
    this.engine = engine;
    this.size = size;
    this.name = name;
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

/** Generation options of `Engine.generateStart` and their names in the module (Python's). */
const GENERATION_OPTIONS = {
  maxNewTokens: "max_new_tokens",
  temperature: "temperature",
  topK: "top_k",
  topP: "top_p",
  minP: "min_p",
  repetitionPenalty: "repetition_penalty",
  seed: "seed",
  stop: "stop",
};
/** The options that are whole numbers. */
const WHOLE_OPTIONS = new Set(["maxNewTokens", "topK", "seed"]);

/**
 * Refuses the numbers JSON cannot carry to the module as they are: NaN and infinities (JSON
 * writes null) and whole numbers from 2^53 (not exact in a double: 2^53 + 1 is 2^53). The
 * module checks every value's range and kind.
 */
function checkOptionNumber(name, value) {
  if (typeof value !== "number") return;
  if (!Number.isFinite(value)) throw new BinLLMError(`${name} must be a finite number, got ${value}`, "InvalidArgument");
  if (WHOLE_OPTIONS.has(name) && value >= 2 ** 53) {
    throw new BinLLMError(`${name} must be below 2^53 (whole numbers are exact in JavaScript up to there), got ${value}`, "InvalidArgument");
  }
}

/**
 * Load options of `Engine.loadGgufFrom`, `loadGguf` and `loadHf` and their names in the module
 * (Python's `from_pretrained`): outputType ("f32" | "f16" | "q8_0" | "q6_k": the output layer,
 * or the embedding matrix when they are tied, re-stored as it is read), ternaryFormat ("t2" |
 * "t1.6"), kvType ("f16" | "f32"). Undefined or null keeps the default (what the file holds;
 * f16 caches). The module checks the values.
 */
const LOAD_OPTIONS = { outputType: "output_type", ternaryFormat: "ternary_format", kvType: "kv_type" };

/** Refuses a name `LOAD_OPTIONS` does not have (InvalidArgument); the module checks the values. */
export function checkLoadOptionNames(options = {}) {
  const unknown = Object.keys(options ?? {}).find((name) => !(name in LOAD_OPTIONS));
  if (unknown !== undefined) throw new BinLLMError(`unknown load option '${unknown}'`, "InvalidArgument");
}

/** `options` as the module reads them (JSON). */
function loadOptionsJson(options = {}) {
  checkLoadOptionNames(options);
  const named = {};
  for (const [name, value] of Object.entries(options ?? {})) {
    if (value !== undefined) named[LOAD_OPTIONS[name]] = value;
  }
  return JSON.stringify(named);
}

/** Bytes of the module's trap report before the panic message: two usizes (wasm32: u32). */
const TRAP_REPORT_HEADER_BYTES = 8;

/** Stack of each extra kernel thread of a threaded build (the main thread has the linker's 1 MiB). */
const THREAD_STACK_BYTES = 2 * 2 ** 20;

export class Engine {
  /**
   * `wasm`: the module's bytes, a URL, or a compiled WebAssembly.Module. A threaded module (one
   * that imports its memory: binllm_wasm_relaxed_threads.wasm) gets a shared memory and
   * `threads - 1` Web Workers (js/thread.js) that run kernels beside the calling thread; that
   * needs SharedArrayBuffer (a cross-origin isolated page: COOP/COEP headers) and Worker.
   */
  static async create(wasm, { threads = 1 } = {}) {
    let module;
    if (wasm instanceof WebAssembly.Module) module = wasm;
    else if (wasm instanceof ArrayBuffer || ArrayBuffer.isView(wasm)) module = await WebAssembly.compile(wasm);
    else {
      const response = await fetch(wasm);
      if (!response.ok) throw new BinLLMError(`cannot fetch ${wasm}: HTTP ${response.status}`, "Io");
      module = await WebAssembly.compile(await response.arrayBuffer());
    }
    let engine = null;
    const imports = { binllm_host: { read_file: (offset, ptr, len) => engine.readSource(offset, ptr >>> 0, len >>> 0) } };
    const shared = WebAssembly.Module.imports(module).some((i) => i.module === "env" && i.name === "memory");
    let memory = null;
    if (shared) {
      if (typeof SharedArrayBuffer === "undefined") {
        throw new BinLLMError("the threaded module needs SharedArrayBuffer (serve the page with COOP/COEP headers), or load a single-threaded one", "Backend");
      }
      memory = new WebAssembly.Memory({ initial: 256, maximum: 65536, shared: true });
      imports.env = { memory };
    }
    const instance = await WebAssembly.instantiate(module, imports);
    engine = new Engine(instance, memory);
    if (shared) await engine.startThreads(module, threads);
    return engine;
  }

  /** Starts `threads - 1` kernel threads (Web Workers on this shared memory); resolves once they run. */
  async startThreads(module, threads) {
    const n = Math.max(1, Math.min(Math.floor(threads) || 1, 64));
    if (n > 1 && typeof Worker === "undefined") throw new BinLLMError("threads need Web Workers", "Backend");
    this.call("starting threads", () => this.exports.binllm_set_threads(n));
    const e = this.exports;
    const tlsSize = e.__tls_size.value;
    const started = [];
    this.threadWorkers = [];
    for (let i = 1; i < n; i++) {
      const stack = this.alloc(THREAD_STACK_BYTES);
      const tls = this.alloc(Math.max(tlsSize, 1));
      const worker = new Worker(new URL("./thread.js", import.meta.url), { type: "module" });
      this.threadWorkers.push(worker);
      started.push(
        new Promise((resolve, reject) => {
          worker.onmessage = ({ data }) => (data.type === "started" ? resolve() : data.type === "error" ? reject(new BinLLMError(`kernel thread ${i}: ${data.message}`, "Backend")) : null);
          worker.onerror = (ev) => reject(new BinLLMError(`kernel thread ${i} failed: ${ev.message ?? "unknown error"}`, "Backend"));
        }),
      );
      worker.postMessage({ module, memory: this.memory, stackTop: (stack + THREAD_STACK_BYTES) & ~15, tls });
    }
    await Promise.all(started);
    this.threads = n;
  }

  constructor(instance, memory = null) {
    /** The file a lazy GGUF load reads from: {size, read(offset, length) -> Uint8Array}. */
    this.source = null;
    this.exports = instance.exports;
    this.memory = memory ?? instance.exports.memory;
    this.threads = 1;
    /** Set by a trap: the instance is left mid-call and cannot be used again. */
    this.trapped = null;
    if (this.exports.binllm_backend_available(1) !== 1) {
      throw new BinLLMError("this browser runs WebAssembly without SIMD128, which binllm's build needs", "Backend");
    }
    /** Address of the module's trap report: a failed allocation's size, a panic's message. */
    this.trapReport = this.exports.binllm_init() >>> 0;
  }

  /** Bytes of wasm memory in use (it only grows). */
  memoryBytes() {
    return this.memory.buffer.byteLength;
  }

  lastError() {
    const e = this.exports;
    const text = decoder.decode(new Uint8Array(this.memory.buffer, e.binllm_last_error_ptr() >>> 0, e.binllm_last_error_len() >>> 0).slice());
    const colon = text.indexOf(": ");
    return colon > 0 ? new BinLLMError(text.slice(colon + 2), text.slice(0, colon)) : new BinLLMError(text);
  }

  resultBytes() {
    const e = this.exports;
    return new Uint8Array(this.memory.buffer, e.binllm_result_ptr() >>> 0, e.binllm_result_len() >>> 0);
  }

  resultText() {
    // A copy: TextDecoder does not read views of a threaded build's SharedArrayBuffer.
    return decoder.decode(this.resultBytes().slice());
  }

  /**
   * Runs a wasm call. A trap becomes a BinLLMError that says what it was: OutOfMemory when an
   * allocation failed (the memory could not grow), else Internal (a panic, with its message,
   * or another trap: a bug); either way this engine cannot be used again (`trapped`).
   */
  call(what, fn) {
    if (this.trapped) throw new BinLLMError(`${what}: this engine stopped after an earlier error (${this.trapped.message}); start a new one`, "Internal");
    new Uint32Array(this.memory.buffer, this.trapReport, 2).fill(0);
    let status;
    try {
      status = fn();
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) {
        this.trapped = this.trapError(what, e);
        throw this.trapped;
      }
      throw e;
    }
    if (status < 0) throw this.lastError();
    return status;
  }

  /** The error a trap in `what` reports, read from the module's trap report. */
  trapError(what, trap) {
    const [failedAlloc, messageLength] = new Uint32Array(this.memory.buffer, this.trapReport, 2);
    if (messageLength > 0) {
      const bytes = new Uint8Array(this.memory.buffer, this.trapReport + TRAP_REPORT_HEADER_BYTES, messageLength).slice();
      return new BinLLMError(`${what} failed on a bug in binllm: ${decoder.decode(bytes)}`, "Internal");
    }
    if (failedAlloc > 0) {
      return new BinLLMError(
        `${what} could not allocate ${formatBytes(failedAlloc)}: the WebAssembly memory cannot grow further (in use: ` +
          `${formatBytes(this.memoryBytes())}; the wasm32 build holds at most 4 GiB and browsers may give less)`,
        "OutOfMemory",
      );
    }
    return new BinLLMError(`${what} failed on a bug in binllm: WebAssembly trap: ${trap.message}`, "Internal");
  }

  alloc(size) {
    if (size >= 2 ** 32) {
      throw new BinLLMError(`cannot reserve ${formatBytes(size)} of WebAssembly memory: the wasm32 build holds at most 4 GiB`, "OutOfMemory");
    }
    const ptr = this.exports.binllm_alloc(wasmSize("an allocation's size", size)) >>> 0;
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
  reserveModelFile(size, name = null) {
    if (size > MAX_MODEL_FILE_BYTES) {
      throw new BinLLMError(
        `${name ?? "the model file"} is ${formatBytes(size)}: too large for the browser build, whose 4 GiB of wasm32 memory must hold ` +
          `the file and the model unpacked from it (files up to ${formatBytes(MAX_MODEL_FILE_BYTES)} can load)`,
        "TooLarge",
      );
    }
    return new WasmBuffer(this, size, name);
  }

  /** The host side of `binllm_host.read_file`: copies bytes of `this.source` into wasm memory. */
  readSource(offset, ptr, len) {
    try {
      for (let done = 0; done < len; ) {
        const n = Math.min(READ_PIECE_BYTES, len - done);
        const bytes = this.source.read(offset + done, n);
        if (bytes.length !== n) throw new Error(`read ${bytes.length} of ${n} bytes at ${offset + done}`);
        new Uint8Array(this.memory.buffer, ptr + done, n).set(bytes);
        done += n;
      }
      return 0;
    } catch (e) {
      this.sourceError = e;
      return -1;
    }
  }

  /**
   * A model from a GGUF file that stays outside wasm memory: `source` is {size, read(offset,
   * length)} returning a Uint8Array synchronously (`blobSource`, `bytesSource`). The header is
   * read first, then each tensor as the model is built. `options`: `LOAD_OPTIONS`.
   */
  loadGgufFrom(source, name = "the model file", options = {}) {
    const optionsJson = loadOptionsJson(options);
    if (source.size > MAX_GGUF_FILE_BYTES) {
      throw new BinLLMError(
        `${name} is ${formatBytes(source.size)}: too large for the browser build, whose 4 GiB of wasm32 memory must hold ` +
          `the model unpacked from it (GGUF files up to ${formatBytes(MAX_GGUF_FILE_BYTES)} can load)`,
        "TooLarge",
      );
    }
    this.source = source;
    this.sourceError = null;
    try {
      for (let prefix = Math.min(GGUF_HEADER_BYTES, source.size); ; prefix = Math.min(2 * prefix, source.size)) {
        const head = source.read(0, prefix);
        try {
          return this.withBytes(head, (p, l) =>
            this.withBytes(optionsJson, (o, ol) => this.call("loading the model", () => this.exports.binllm_model_load_gguf_lazy(p, l, source.size, o, ol))),
          );
        } catch (e) {
          if (this.sourceError) throw new BinLLMError(`cannot read ${name}: ${this.sourceError.message ?? this.sourceError}`, "Io");
          if (!(e.name === "Format" && /truncated/.test(e.message) && prefix < Math.min(source.size, MAX_GGUF_HEADER_BYTES))) throw e;
        }
      }
    } finally {
      this.source = null;
    }
  }

  /** Checks load options (`LOAD_OPTIONS`) as a load would, before anything is read or downloaded. */
  checkLoadOptions(options = {}) {
    this.withBytes(loadOptionsJson(options), (o, ol) => this.call("reading the load options", () => this.exports.binllm_check_load_options(o, ol)));
  }

  /** A model from a filled WasmBuffer holding a GGUF file; the buffer is freed. `options`: `LOAD_OPTIONS`. */
  loadGguf(buffer, options = {}) {
    try {
      if (buffer.filled !== buffer.size) throw new BinLLMError(`the file ended after ${buffer.filled} of ${buffer.size} bytes`, "Format");
      return this.withBytes(loadOptionsJson(options), (o, ol) =>
        this.call("loading the model", () => this.exports.binllm_model_load_gguf(buffer.ptr, buffer.size, o, ol)),
      );
    } finally {
      buffer.free();
    }
  }

  /**
   * The safetensors files a folder's model.safetensors.index.json (its text) names, sorted and
   * distinct; a name that would leave the folder is a Format error (the core's listing).
   */
  shardNames(indexText) {
    this.withBytes(indexText, (p, l) => this.call("reading model.safetensors.index.json", () => this.exports.binllm_hf_shard_names(p, l)));
    return JSON.parse(this.resultText());
  }

  /**
   * A model from a Hugging Face folder's files: `json` maps config.json, tokenizer.json,
   * generation_config.json, tokenizer_config.json to their text (the last two may be missing);
   * `weights` are filled WasmBuffers of safetensors files, freed here. An error names the file
   * it is about ("config.json: ...", "model-00001-of-00002.safetensors: ..."): a buffer by the
   * name `reserveModelFile` got, an unnamed one as model.safetensors (a folder's one file) or,
   * among several, by its place in the list. `options`: `LOAD_OPTIONS`.
   */
  loadHf(json, weights, options = {}) {
    let optionsJson;
    try {
      optionsJson = loadOptionsJson(options);
    } catch (e) {
      weights.forEach((w) => w.free());
      throw e;
    }
    const texts = ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"].map((n) => json[n] ?? "");
    const names = weights.map((w, i) => w.name ?? (weights.length === 1 ? "model.safetensors" : `safetensors file ${i + 1} of ${weights.length}`));
    const placed = [...texts, JSON.stringify(names), optionsJson].map((t) => this.put(t));
    const table = new Uint32Array(weights.flatMap((w) => [w.ptr, w.size])); // (pointer, length) usize pairs
    try {
      return this.withBytes(new Uint8Array(table.buffer), (tablePtr) =>
        this.call("loading the model", () => this.exports.binllm_model_load_hf(...placed.slice(0, 4).flat(), tablePtr, weights.length, ...placed[4], ...placed[5])),
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
    const bytes = idBytes(ids);
    this.withBytes(bytes, (p) => this.call("decoding", () => this.exports.binllm_decode(handle, p, ids.length, skipSpecial ? 1 : 0)));
    return this.resultText();
  }

  /**
   * Starts generating after `prompt`, ending any generation in progress; returns the prompt's
   * token count. Options are `binllm.Model.generate`'s, camel-cased: maxNewTokens (default 128),
   * temperature (0: greedy), topK (0: off), topP (1: off), minP (0: off), repetitionPenalty
   * (1: off), seed (an integer below 2^53), stop (a string or a list of them). The module
   * checks the values (maxNewTokens and topK past 2^32 - 1 mean the same as 2^32 - 1: more
   * than any context holds); the first `generateStep` runs the prompt.
   */
  generateStart(handle, prompt, { maxNewTokens = 128, ...rest } = {}) {
    const options = {};
    for (const [name, value] of Object.entries({ maxNewTokens, ...rest })) {
      if (value === undefined) continue;
      if (!(name in GENERATION_OPTIONS)) throw new BinLLMError(`unknown generation option '${name}'`, "InvalidArgument");
      checkOptionNumber(name, value);
      options[GENERATION_OPTIONS[name]] = name === "stop" && typeof value === "string" ? [value] : value;
    }
    return this.withBytes(prompt, (p, l) =>
      this.withBytes(JSON.stringify(options), (o, ol) => this.call("reading the prompt", () => this.exports.binllm_generate_start(handle, p, l, o, ol))),
    );
  }

  /**
   * One token (the first call runs the prompt): {piece, tokens, done, added, finishReason,
   * finishDetail}. `piece` is the text ready since the last step, `tokens` the tokens generated
   * so far; on the last step `done` is true and finishReason is "stop" or "length", with
   * finishDetail "eos", "stop_string", "max_tokens" or "context" (null before).
   */
  generateStep(handle) {
    const finished = this.call("generating", () => this.exports.binllm_generate_step(handle));
    const event = JSON.parse(this.resultText());
    return {
      piece: event.text,
      tokens: event.tokens,
      done: finished === 1,
      added: event.finish_detail !== "eos",
      finishReason: event.finish_reason,
      finishDetail: event.finish_detail,
    };
  }

  /**
   * Ends the generation in progress (if any) and frees its memory. Returns the text it held
   * back (half a character, as U+FFFD; a possible start of a stop string), so that the text
   * handed out equals a run whose maxNewTokens is the tokens generated ("" when none ran).
   */
  generateCancel(handle) {
    this.call("cancelling", () => this.exports.binllm_generate_cancel(handle));
    return this.resultText();
  }

  /**
   * Teacher-forced logits of `ids` from position 0 (what `binllm.Model.logits` gives natively):
   * a Float32Array of ids.length x vocab values, or of vocab values (the last position) when
   * `all` is false.
   */
  logits(handle, ids, all = true) {
    const bytes = idBytes(ids);
    const n = this.withBytes(bytes, (p) => this.call("forward", () => this.exports.binllm_forward_logits(handle, p, ids.length, all ? 1 : 0)));
    return new Float32Array(this.resultBytes().slice().buffer, 0, n);
  }

  /** Benchmarks: a fresh cache, then forward passes that return the argmax token. */
  forwardReset(handle, capacity) {
    this.call("forward", () => this.exports.binllm_forward_reset(handle, wasmSize("capacity", capacity)));
  }

  forwardArgmax(handle, ids) {
    const bytes = idBytes(ids);
    return this.withBytes(bytes, (p) => this.call("forward", () => this.exports.binllm_forward_argmax(handle, p, ids.length)));
  }
}

/** A lazy source over bytes already in JS memory (an ArrayBuffer or a typed array). */
export function bytesSource(data) {
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { size: bytes.length, read: (offset, length) => bytes.subarray(offset, offset + length) };
}

/** A lazy source over a file held as consecutive chunks (Uint8Arrays) in JS memory. */
export function chunksSource(chunks) {
  const starts = [];
  let size = 0;
  for (const c of chunks) {
    starts.push(size);
    size += c.length;
  }
  const read = (offset, length) => {
    let lo = 0, hi = chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    const first = chunks[lo].subarray(offset - starts[lo]);
    if (first.length >= length) return first.subarray(0, length);
    const out = new Uint8Array(length);
    let filled = 0;
    for (let i = lo; filled < length && i < chunks.length; i++) {
      const part = i === lo ? first : chunks[i];
      const n = Math.min(part.length, length - filled);
      out.set(part.subarray(0, n), filled);
      filled += n;
    }
    return filled === length ? out : out.subarray(0, filled);
  };
  return { size, read };
}

/** A lazy source over a Blob or File, read synchronously (FileReaderSync: Web Workers only). */
export function blobSource(blob) {
  const reader = new FileReaderSync();
  return { size: blob.size, read: (offset, length) => new Uint8Array(reader.readAsArrayBuffer(blob.slice(offset, offset + length))) };
}
