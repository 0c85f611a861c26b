// Engine.loadHf's errors name the file they are about, as the native loader's do ("config.json:
// ...", "model-00002-of-00002.safetensors: ..."), on binllm's embedded model: its JSON files
// broken one at a time, and its weights split into two shards, one of them broken. Build first:
// scripts/build-wasm.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Engine, BinLLMError } from "../js/engine.js";

const WASM = await readFile(new URL("../pkg/binllm_wasm.wasm", import.meta.url));
const FOLDER = new URL("../../python/binllm/default_model/", import.meta.url);
const FILES = ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"];
const TEXTS = Object.fromEntries(await Promise.all(FILES.map(async (name) => [name, await readFile(new URL(name, FOLDER), "utf8")])));
const WEIGHTS = new Uint8Array(await readFile(new URL("model.safetensors", FOLDER)));
const SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

const engine = await Engine.create(WASM);

/** A safetensors file's tensors, [{name, dtype, shape, data}], in the order of their bytes. */
function readSafetensors(bytes) {
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const base = 8 + headerLength;
  return Object.entries(header)
    .filter(([name]) => name !== "__metadata__")
    .map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: bytes.subarray(base + t.data_offsets[0], base + t.data_offsets[1]) }))
    .sort((a, b) => a.data.byteOffset - b.data.byteOffset);
}

function writeSafetensors(tensors) {
  const header = {};
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  const text = new TextEncoder().encode(JSON.stringify(header));
  const headerLength = Math.ceil(text.length / 8) * 8; // padded with spaces, as writers align it
  const out = new Uint8Array(8 + headerLength + offset).fill(0x20, 8, 8 + headerLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(text, 8);
  let at = 8 + headerLength;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.length;
  }
  return out;
}

const TENSORS = readSafetensors(WEIGHTS);
const HALF = Math.ceil(TENSORS.length / 2);

/** The model's weights in two shards, each first changed by `change(tensors, shard)`. */
function shards(change = (tensors) => tensors) {
  return [TENSORS.slice(0, HALF), TENSORS.slice(HALF)].map((tensors, i) => [SHARDS[i], writeSafetensors(change(tensors, i))]);
}

/** Loads the texts and `files` ([name or null, bytes]) as the worker does; the error's message. */
function loadError(files, texts = TEXTS) {
  const buffers = files.map(([name, bytes]) => {
    const buffer = engine.reserveModelFile(bytes.length, name);
    buffer.write(bytes);
    return buffer;
  });
  try {
    engine.freeModel(engine.loadHf(texts, buffers));
  } catch (e) {
    assert.ok(e instanceof BinLLMError, String(e));
    return e.message;
  }
  return null;
}

test("the model split into two shards loads", () => {
  assert.equal(loadError(shards()), null);
});

test("a broken shard is named", () => {
  const [first, second] = shards();
  const truncated = [first, [second[0], second[1].subarray(0, second[1].length / 2)]];
  assert.match(loadError(truncated), /^malformed model file: model-00002-of-00002\.safetensors: safetensors: /);
  const garbage = [[first[0], new Uint8Array(64).fill(0xff)], second];
  assert.match(loadError(garbage), /^malformed model file: model-00001-of-00002\.safetensors: /);
});

test("a tensor's problem names the shard it is in", () => {
  const last = TENSORS.at(-1);
  const reshaped = shards((tensors) => tensors.map((t) => (t === last ? { ...t, shape: [...t.shape.slice(0, -1), t.shape.at(-1) / 2, 2] } : t)));
  assert.match(loadError(reshaped), new RegExp(`^malformed model file: model-00002-of-00002\\.safetensors: (packed )?tensor '${last.name}' has shape`));
  const extra = shards((tensors, shard) => (shard === 0 ? [...tensors, { ...tensors[0], name: "model.unused.weight" }] : tensors));
  assert.match(loadError(extra), /^malformed model file: model-00001-of-00002\.safetensors: tensor 'model\.unused\.weight' is not used/);
  // A tensor in no file: every file is named, as none has it.
  const missing = shards((tensors) => tensors.filter((t) => t !== last));
  assert.match(loadError(missing), new RegExp(`^malformed model file: model-00001-of-00002\\.safetensors, model-00002-of-00002\\.safetensors: missing tensor '${last.name}'`));
});

test("an unnamed buffer is a folder's model.safetensors", () => {
  assert.match(loadError([[null, WEIGHTS.subarray(0, 5000)]]), /^malformed model file: model\.safetensors: safetensors: .*truncated/);
});

test("a JSON file's problem names it", () => {
  const vocab = JSON.parse(TEXTS["tokenizer.json"]);
  const last = Object.keys(vocab.model.vocab).at(-1);
  vocab.model.vocab[last] = 2 ** 31;
  for (const [name, text, message] of [
    ["config.json", '{"hidden_size": 64', /^malformed model file: config\.json is not valid JSON/],
    ["config.json", JSON.stringify({ ...JSON.parse(TEXTS["config.json"]), hidden_act: "tanh" }), /^unsupported: config\.json: hidden_act: /],
    ["tokenizer.json", TEXTS["tokenizer.json"].slice(0, 1000), /^malformed model file: tokenizer\.json: EOF while parsing/],
    ["tokenizer.json", JSON.stringify(vocab), /^malformed model file: tokenizer\.json: token '.+' has id 2147483648; ids are integers from 0 to 16777215$/],
    ["generation_config.json", '{"temperature": "hot"}', /^malformed model file: generation_config\.json: temperature/],
    ["tokenizer_config.json", "[1]", /^malformed model file: tokenizer_config\.json is not a JSON object/],
  ]) {
    assert.match(loadError([["model.safetensors", WEIGHTS]], { ...TEXTS, [name]: text }), message, name);
  }
});
