// The Web Worker that owns the wasm engine: it fetches (or reads) model files straight into wasm
// memory, loads the model, and generates token by token, posting each piece of text back. The
// page's thread only ever exchanges messages with it, so a long prompt never freezes the page.
//
// Messages in:  {type: "load", id, source, options}, {type: "generate", id, prompt, options},
//               {type: "tokenize", id, text, addSpecial}, {type: "decode", id, ids},
//               {type: "bench", id, promptTokens, decodeTokens, repeats}, {type: "logits", id, ids, all},
//               {type: "stop"}
// Messages out: {type: "progress", id, phase, loaded, total} (phase "size" first, with the file's
//               size in total, where it is known before reading), {type: "token", id, piece, ...stats},
//               {type: "result", id, value}, {type: "error", id, name, message}
// A generate's options are Engine.generateStart's (maxNewTokens, temperature, topK, topP, minP,
// repetitionPenalty, seed, stop); its result adds finishReason and finishDetail to the stats.
import { Engine, BinLLMError, formatBytes, MAX_MODEL_FILE_BYTES, MAX_GGUF_FILE_BYTES, blobSource, bytesSource, chunksSource } from "./engine.js";

const CACHE_NAME = "binllm-models-v1";
let engine = null;
let handle = 0;
let stopRequested = false;

const post = (message) => self.postMessage(message);

// Yields to the event loop (so a "stop" message can arrive) without setTimeout's 4 ms clamp.
const channel = new MessageChannel();
const yieldToEvents = () =>
  new Promise((resolve) => {
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(0);
  });

async function getEngine(wasmUrl, threads) {
  engine ??= await Engine.create(wasmUrl, { threads });
  return engine;
}

/** A URL's response, from the Cache API when it has it (then nothing is downloaded). */
async function openUrl(url, useCache, progress) {
  let cache = null;
  if (useCache && self.caches) {
    try {
      cache = await caches.open(CACHE_NAME);
      const hit = await cache.match(url);
      if (hit) return { response: hit, fromCache: true, store: Promise.resolve() };
    } catch {
      cache = null; // private windows and file:// pages have no usable cache
    }
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new BinLLMError(`cannot download ${url}: ${e.message}`, "Io");
  }
  if (!response.ok) throw new BinLLMError(`cannot download ${url}: HTTP ${response.status} ${response.statusText}`, "Io");
  let store = Promise.resolve();
  if (cache) {
    // A full disk or quota only costs the next reload a download.
    store = cache.put(url, response.clone()).catch((e) => console.warn(`binllm: not cached (${e.message})`));
  }
  return { response, fromCache: false, store };
}

/** Streams `source` (URL string, Blob/File, ArrayBuffer or typed array) into a WasmBuffer. */
async function readIntoWasm(source, name, useCache, progress) {
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    const bytes = source instanceof ArrayBuffer ? new Uint8Array(source) : new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    const buffer = engine.reserveModelFile(bytes.length, name);
    buffer.write(bytes);
    progress("read", bytes.length, bytes.length);
    return buffer;
  }
  let stream, size, phase, store = Promise.resolve();
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    [stream, size, phase] = [source.stream(), source.size, "read"];
  } else if (typeof source === "string") {
    const opened = await openUrl(source, useCache, progress);
    const length = Number(opened.response.headers.get("content-length"));
    [stream, size, phase, store] = [opened.response.body, length > 0 ? length : null, opened.fromCache ? "cache" : "download", opened.store];
  } else {
    throw new BinLLMError("a model source must be a URL, a File/Blob or an ArrayBuffer", "InvalidArgument");
  }
  const reader = stream.getReader();
  let buffer = null;
  const pending = []; // chunks of a response without a Content-Length
  let loaded = 0;
  try {
    if (size !== null) buffer = engine.reserveModelFile(size, name);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      loaded += value.length;
      if (buffer) buffer.write(value);
      else if (loaded > MAX_MODEL_FILE_BYTES) engine.reserveModelFile(loaded, name); // throws TooLarge now, not at the end
      else pending.push(value);
      progress(phase, loaded, size ?? 0);
    }
    if (!buffer) {
      buffer = engine.reserveModelFile(loaded, name);
      for (const chunk of pending) buffer.write(chunk);
    }
    await store;
    return buffer;
  } catch (e) {
    buffer?.free();
    reader.cancel().catch(() => {});
    throw e;
  }
}

/**
 * A GGUF `source` as a lazy source for `Engine.loadGgufFrom`: the file stays outside wasm memory
 * (a picked File on disk, an ArrayBuffer, or a download's chunks) and the engine reads it tensor
 * by tensor.
 */
async function openGguf(source, name, useCache, progress) {
  const tooLarge = (size) => {
    if (size > MAX_GGUF_FILE_BYTES) {
      throw new BinLLMError(
        `${name} is ${formatBytes(size)}: too large for the browser build (GGUF files up to ${formatBytes(MAX_GGUF_FILE_BYTES)} fit in wasm32's 4 GiB)`,
        "TooLarge",
      );
    }
  };
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    const lazy = bytesSource(source);
    progress("read", lazy.size, lazy.size);
    return lazy;
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    progress("size", 0, source.size);
    tooLarge(source.size);
    progress("read", source.size, source.size);
    return blobSource(source);
  }
  if (typeof source !== "string") throw new BinLLMError("a model source must be a URL, a File/Blob or an ArrayBuffer", "InvalidArgument");
  const opened = await openUrl(source, useCache, progress);
  const length = Number(opened.response.headers.get("content-length"));
  // Before the body is read: the page can state the size (and the memory it will take), and a
  // file that cannot fit is refused without downloading it.
  if (length > 0) progress("size", 0, length);
  if (length > 0) {
    try {
      tooLarge(length);
    } catch (e) {
      opened.response.body?.cancel().catch(() => {});
      throw e;
    }
  }
  // The body stays in JS memory as its chunks (outside wasm memory) until the model is built.
  // (A Blob made of them would be the browser's to keep, but Chromium fails to read back
  // parts of one that large with FileReaderSync.)
  const phase = opened.fromCache ? "cache" : "download";
  const reader = opened.response.body.getReader();
  const chunks = [];
  let loaded = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      loaded += value.length;
      tooLarge(loaded);
      chunks.push(value);
      progress(phase, loaded, length > 0 ? length : 0);
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  }
  await opened.store;
  return chunksSource(chunks);
}

const isGguf = (name) => /\.gguf$/i.test(name);

/** Loads a GGUF (URL/File/bytes) or a Hugging Face folder ({files: File[]} or a URL ending in '/'). */
async function load({ source, options = {} }, progress) {
  await getEngine(options.wasmUrl, options.threads);
  engine.checkLoadOptions(options.load);
  if (handle) engine.freeModel(handle);
  handle = 0;
  const useCache = options.cache !== false;
  if (typeof source === "string" && source.endsWith("/")) {
    handle = await loadHfFolder((name) => new URL(name, source).href, useCache, progress, options.load);
  } else if (source && Array.isArray(source.files)) {
    const byName = new Map(source.files.map((f) => [f.webkitRelativePath?.split("/").pop() || f.name, f]));
    const gguf = source.files.find((f) => isGguf(f.name));
    if (gguf) handle = engine.loadGgufFrom(await openGguf(gguf, gguf.name, false, progress), gguf.name, options.load);
    else handle = await loadHfFolder((name) => byName.get(name) ?? null, false, progress, options.load);
  } else {
    const name = typeof source === "string" ? source.split("/").pop() : source?.name ?? "the model file";
    const lazy = await openGguf(source, name, useCache, progress);
    progress("parse", lazy.size, lazy.size);
    await yieldToEvents();
    handle = engine.loadGgufFrom(lazy, name, options.load);
  }
  return { ...engine.info(handle), memory_bytes: engine.memoryBytes() };
}

/** A Hugging Face folder: `locate(name)` gives a URL, a File, or null when the file is absent. */
async function loadHfFolder(locate, useCache, progress, loadOptions) {
  const text = async (name, required) => {
    const where = locate(name);
    if (where === null) {
      if (required) throw new BinLLMError(`the model folder has no ${name}`, "Io");
      return "";
    }
    if (typeof where !== "string") return where.text();
    const response = await fetch(where);
    if (!response.ok) {
      if (required || response.status !== 404) throw new BinLLMError(`cannot download ${where}: HTTP ${response.status}`, "Io");
      return "";
    }
    return response.text();
  };
  const json = {};
  for (const [name, required] of [["config.json", true], ["tokenizer.json", true], ["generation_config.json", false], ["tokenizer_config.json", false]]) {
    json[name] = await text(name, required);
  }
  let files = ["model.safetensors"];
  const index = await text("model.safetensors.index.json", false).catch(() => "");
  if (index) files = engine.shardNames(index);
  const weights = [];
  try {
    for (const f of files) {
      const where = locate(f);
      if (where === null) throw new BinLLMError(`the model folder has no ${f}`, "Io");
      weights.push(await readIntoWasm(where, f, useCache, progress));
    }
  } catch (e) {
    weights.forEach((w) => w.free());
    throw e;
  }
  progress("parse", 1, 1);
  await yieldToEvents();
  return engine.loadHf(json, weights, loadOptions);
}

/**
 * Runs one generation, posting each piece of text. The first step runs the prompt and samples
 * the first token (promptMs); later steps one token each (decodeMs, tokensPerSecond).
 */
async function generate({ id, prompt, options = {} }) {
  if (!handle) throw new BinLLMError("no model is loaded", "InvalidArgument");
  stopRequested = false;
  const started = performance.now();
  const promptTokens = engine.generateStart(handle, prompt, options);
  let text = "";
  let tokens = 0;
  let promptMs = 0;
  let decodeMs = 0;
  let decodeSteps = 0;
  let lastYield = performance.now();
  for (let first = true; ; first = false) {
    const t0 = performance.now();
    const step = engine.generateStep(handle);
    if (first) promptMs = performance.now() - started;
    else {
      decodeMs += performance.now() - t0;
      decodeSteps += 1;
    }
    tokens = step.tokens;
    text += step.piece;
    const stats = { tokens, promptTokens, promptMs, decodeMs, tokensPerSecond: decodeSteps / (decodeMs / 1000 || Infinity), memoryBytes: engine.memoryBytes() };
    if (step.piece || step.done) post({ type: "token", id, piece: step.piece, ...stats });
    if (step.done) return { text, stopped: false, finishReason: step.finishReason, finishDetail: step.finishDetail, ...stats };
    if (performance.now() - lastYield > 20) {
      await yieldToEvents();
      lastYield = performance.now();
    }
    if (stopRequested) {
      // Text held back (half a character, a possible start of a stop string) comes out as it
      // would had maxNewTokens ended the run here.
      const rest = engine.generateCancel(handle);
      text += rest;
      if (rest) post({ type: "token", id, piece: rest, ...stats });
      return { text, stopped: true, finishReason: null, finishDetail: null, ...stats };
    }
  }
}

/** Prompt and decode tokens/s on random ids, best of `repeats` (as `binllm bench` measures). */
function bench({ promptTokens = 128, decodeTokens = 64, repeats = 3, seed = 1 }) {
  if (!handle) throw new BinLLMError("no model is loaded", "InvalidArgument");
  const vocab = engine.info(handle).vocab_size;
  let s = seed >>> 0 || 1;
  const ids = Array.from({ length: promptTokens }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
  let promptS = Infinity, decodeS = Infinity;
  for (let r = 0; r < repeats; r++) {
    engine.forwardReset(handle, promptTokens + decodeTokens);
    let t = performance.now();
    let token = engine.forwardArgmax(handle, ids);
    promptS = Math.min(promptS, (performance.now() - t) / 1000);
    t = performance.now();
    for (let i = 0; i < decodeTokens; i++) token = engine.forwardArgmax(handle, [token]);
    decodeS = Math.min(decodeS, (performance.now() - t) / 1000);
  }
  return { prompt_tokens: promptTokens, decode_tokens: decodeTokens, prompt_tok_s: promptTokens / promptS, decode_tok_s: decodeTokens / decodeS, memory_bytes: engine.memoryBytes() };
}

self.onmessage = async ({ data }) => {
  if (data.type === "stop") {
    stopRequested = true;
    return;
  }
  const { id } = data;
  const progress = (phase, loaded, total) => post({ type: "progress", id, phase, loaded, total });
  try {
    let value;
    if (data.type === "load") value = await load(data, progress);
    else if (data.type === "generate") value = await generate(data);
    else if (data.type === "tokenize") value = engine.encode(handle, data.text, data.addSpecial !== false);
    else if (data.type === "decode") value = engine.decode(handle, data.ids, data.skipSpecial !== false);
    else if (data.type === "bench") value = bench(data);
    else if (data.type === "logits") value = engine.logits(handle, data.ids, data.all !== false);
    else throw new BinLLMError(`unknown message type '${data.type}'`, "InvalidArgument");
    post({ type: "result", id, value });
  } catch (e) {
    post({ type: "error", id, name: e.name ?? "Error", message: e.message ?? String(e) });
    // A trap leaves the wasm instance unusable, and memory that ran out is never given back:
    // start afresh on the next load.
    if (engine?.trapped || e.name === "OutOfMemory") {
      engine?.threadWorkers?.forEach((w) => w.terminate());
      engine = null;
      handle = 0;
    }
  }
};

post({ type: "ready", memoryLimit: formatBytes(2 ** 32) });
