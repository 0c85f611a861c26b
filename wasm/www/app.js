// The demo page: load a model (the URL in ?model=, default model.gguf beside the page, or a
// picked file or folder), then stream generated text with tokens/s and memory use. All the
// work happens in binllm's worker; this file only wires the page to the BinLLM API.
//
// Query parameters (the browser test uses them): model, outputType, prompt, maxNewTokens, temperature, topK,
// topP, minP, repetitionPenalty, seed, stop, autorun=1 (load, then generate once). The body's
// data-state goes idle -> loading -> ready -> generating -> done (or error).
import { BinLLM, MAX_GGUF_FILE_BYTES, memoryEstimate } from "../js/binllm.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
let model = null;

const formatBytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`);
const setState = (state) => (document.body.dataset.state = state);

function showError(e) {
  $("error").textContent = `${e.name ?? "Error"}: ${e.message ?? e}`;
  setState("error");
}

function jsHeap() {
  const m = performance.memory;
  return m ? `, JS heap ${formatBytes(m.usedJSHeapSize)}` : "";
}

const PHASES = { download: "downloading", cache: "reading from cache", read: "reading file", parse: "unpacking the model" };

function onProgress({ phase, loaded, total }) {
  window.binllmPhases = [...new Set([...(window.binllmPhases ?? []), phase])];
  if (phase === "size") {
    // Known before the file is read: what it is and what it will take.
    $("model-facts").textContent =
      total > MAX_GGUF_FILE_BYTES
        ? `file ${formatBytes(total)}: too large for the browser (GGUF files up to ${formatBytes(MAX_GGUF_FILE_BYTES)})`
        : `file ${formatBytes(total)}; needs about ${formatBytes(memoryEstimate(total))} of wasm memory (a tab can have 4 GiB)`;
    return;
  }
  $("progress").value = total ? loaded / total : phase === "parse" ? 1 : 0;
  if (!total && phase !== "parse") $("progress").removeAttribute("value");
  const amount = total ? `${formatBytes(loaded)} of ${formatBytes(total)}` : loaded ? formatBytes(loaded) : "";
  $("progress-text").textContent = `${PHASES[phase] ?? phase} ${amount}`;
}

async function load(source, name) {
  $("error").textContent = "";
  $("generate").disabled = true;
  setState("loading");
  model?.dispose();
  model = null;
  const started = performance.now();
  try {
    model = await BinLLM.load(source, { onProgress, outputType: $("output-type").value || undefined });
  } catch (e) {
    $("progress-text").textContent = "";
    showError(e);
    return false;
  }
  const info = model.info();
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  $("model-name").textContent = name;
  $("model-facts").textContent =
    `${info.architecture}, ${info.num_hidden_layers} layers, hidden ${info.hidden_size}, vocab ${info.vocab_size}, ` +
    `weights ${formatBytes(info.weight_bytes)} (output layer ${info.output_storage}), ${info.backend}, ${info.threads} thread${info.threads === 1 ? "" : "s"}`;
  $("progress").value = 1;
  $("progress-text").textContent = `loaded in ${seconds} s; wasm memory ${formatBytes(info.memory_bytes)}`;
  $("generate").disabled = false;
  setState("ready");
  return true;
}

/** The stop field: a JSON list of strings, or one string where \n and \t are escapes. */
function stopStrings(value) {
  if (!value) return [];
  if (value.startsWith("[")) return JSON.parse(value);
  return [value.replace(/\\n/g, "\n").replace(/\\t/g, "\t")];
}

async function generate() {
  if (!model) return;
  $("error").textContent = "";
  $("output").textContent = "";
  $("prompt-echo").textContent = $("prompt").value;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setState("generating");
  const showStats = (s, final) => {
    const promptRate = s.promptMs > 0 ? (s.promptTokens / (s.promptMs / 1000)).toFixed(1) : "-";
    $("stats").textContent =
      `${s.tokens} tokens, ${s.tokensPerSecond.toFixed(1)} tokens/s (prompt: ${s.promptTokens} tokens, ${promptRate} tokens/s), ` +
      `wasm memory ${formatBytes(s.memoryBytes)}${jsHeap()}${final && s.stopped ? " (stopped)" : ""}` +
      `${final && s.finishReason ? `; finished: ${s.finishReason} (${s.finishDetail})` : ""}`;
  };
  try {
    const result = await model.generate($("prompt").value, {
      maxNewTokens: Number($("max-new-tokens").value),
      temperature: Number($("temperature").value),
      topK: Number($("top-k").value),
      topP: Number($("top-p").value),
      minP: Number($("min-p").value),
      repetitionPenalty: Number($("repetition-penalty").value),
      seed: Number($("seed").value),
      stop: stopStrings($("stop-strings").value),
      onToken: (piece, stats) => {
        $("output").textContent += piece;
        showStats(stats, false);
      },
    });
    showStats(result, true);
    window.binllmResult = result;
    setState("done");
  } catch (e) {
    showError(e);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

$("model-url").value = query.get("model") ?? "model.gguf";
$("load-url").onclick = () => load($("model-url").value, $("model-url").value);
$("model-file").onchange = (e) => e.target.files[0] && load(e.target.files[0], e.target.files[0].name);
$("model-folder").onchange = (e) => {
  const files = Array.from(e.target.files);
  if (files.length) load({ files }, files[0].webkitRelativePath.split("/")[0] || "folder");
};
$("generate").onclick = generate;
$("stop").onclick = () => model?.stop();
const PARAMETERS = [
  ["outputType", "output-type"], ["prompt", "prompt"], ["maxNewTokens", "max-new-tokens"], ["temperature", "temperature"], ["topK", "top-k"], ["topP", "top-p"],
  ["minP", "min-p"], ["repetitionPenalty", "repetition-penalty"], ["seed", "seed"], ["stop", "stop-strings"],
];
for (const [param, id] of PARAMETERS) {
  if (query.has(param)) $(id).value = query.get(param);
}

// Load the default model at once (it is served beside the page, and cached after the first visit).
load($("model-url").value, $("model-url").value).then((ok) => {
  if (ok && query.get("autorun") === "1") generate();
});
