#!/usr/bin/env bash
# The embedded model's float twin distilled into ternary, against the embedded model itself
# (ternary, trained from scratch by scripts/train-default-model.sh): the README's "Distilling
# the embedded model's float twin". CI does not run this (about 40 minutes on 2 cores).
#
#   PYTHON=/path/to/python-with-torch scripts/distill-default-model.sh [RESULTS_DIR]
#
# 1. The corpus (scripts/default-corpus.sh).
# 2. A float Llama model of the embedded model's shape (no sub-norms: what binllm distill reads),
#    with its tokenizer, data, steps and schedule, read from its training_summary.json
#    (binllm train --float --arch llama, 1 thread).
# 3. binllm distill from it into t2 for the scratch run's tokens (1,843,200: 900 steps x 8 x 256),
#    model stage only, --lr 5e-4, from gptq-ternary (group 256, MSE scales) and from absmean, two
#    runs at once on 1 thread each; then both again with distill's defaults (block and model
#    stages, --lr 2e-3) for the scratch run's training minutes (12.1).
# 4. Held-out perplexity of every model through binllm (scripts/evaluate_default_model.py: the
#    tails binllm train kept out, 305 windows of 256 tokens).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-${TMPDIR:-/tmp}/binllm-default-model}
RESULTS=${1:-$ROOT/benches/results/distill-default-model}
PYTHON="$PY" WORK="$WORK" "$ROOT/scripts/default-corpus.sh"
TEXT=("$WORK/corpus/shakespeare.txt" "$WORK/corpus/austen.txt" "$WORK/corpus/kjv.txt")
RUNS="$WORK/distill-runs"
rm -rf "$RUNS"  # binllm train and distill never overwrite
mkdir -p "$RUNS" "$RESULTS"
cd "$ROOT"

# The embedded model's shape and schedule, as its training summary records them.
mapfile -t SHAPE < <("$PY" - "$ROOT/python/binllm/default_model/training_summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m, t = s["model_config"], s["train_config"]
args = {"hidden": m["hidden_size"], "intermediate": m["intermediate_size"], "layers": m["num_hidden_layers"],
        "heads": m["num_attention_heads"], "kv-heads": m["num_key_value_heads"], "context": m["max_position_embeddings"],
        "rope-theta": m["rope_theta"], "activation": m["hidden_act"], "batch-size": t["batch_size"], "steps": t["steps"],
        "warmup": t["warmup_steps"], "lr": t["learning_rate"], "min-lr-ratio": t["min_learning_rate_ratio"],
        "weight-decay": t["weight_decay"], "grad-clip": t["grad_clip"], "seed": t["seed"]}
for k, v in args.items():
    print(f"--{k}"); print(v)
PY
)
# The scratch run's tokens and training minutes: the distillation budgets.
read -r TOKENS MINUTES < <("$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["tokens"], round(s["train_seconds"] / 60, 1))' \
    "$ROOT/python/binllm/default_model/training_summary.json")
"$PY" -m binllm.train.cli "${TEXT[@]}" --out "$RUNS/float-llama" --checkpoint-dir "$RUNS/float-llama-checkpoints" \
    --tokenizer "$ROOT/python/binllm/default_model/tokenizer.json" --threads 1 --float --arch llama "${SHAPE[@]}" \
    --eval-every 50 --eval-windows 16 --checkpoint-every 50 --log-every 10 2> "$RUNS/float-llama.log"

distill() {  # NAME INIT ARGS...
    local name=$1 init=$2
    shift 2
    OMP_WAIT_POLICY=PASSIVE "$PY" -m binllm.train.distill "$RUNS/float-llama" --out "$RUNS/$name" --text "${TEXT[@]}" \
        --format t2 --init "$init" --threads 1 "$@" 2> "$RUNS/$name.log"
}
# The two PTQ starts (what binllm distill --init METHOD writes into its checkpoint folder).
"$PY" -m binllm quantize "$RUNS/float-llama" "$RUNS/init-gptq" --method gptq-ternary --group-size 256 --scale mse \
    --calib "${TEXT[0]}" --calib-tokens 4096 --quiet
"$PY" -m binllm quantize "$RUNS/float-llama" "$RUNS/init-absmean" --method absmean --quiet
distill lr5e-4-gptq "$RUNS/init-gptq" --stage model --lr 5e-4 --tokens "$TOKENS" --eval-every 100 &
distill lr5e-4-absmean "$RUNS/init-absmean" --stage model --lr 5e-4 --tokens "$TOKENS" --eval-every 100 &
wait
distill defaults-gptq "$RUNS/init-gptq" --minutes "$MINUTES" --eval-every 50 &
distill defaults-absmean "$RUNS/init-absmean" --minutes "$MINUTES" --eval-every 50 &
wait

OMP_NUM_THREADS=1 "$PY" scripts/evaluate_default_model.py "$ROOT/python/binllm/default_model" "${TEXT[@]}" \
    --json "$RESULTS/eval-embedded-scratch.json" > /dev/null
for name in float-llama init-gptq init-absmean lr5e-4-gptq lr5e-4-absmean defaults-gptq defaults-absmean; do
    OMP_NUM_THREADS=1 "$PY" scripts/evaluate_default_model.py "$RUNS/$name" "${TEXT[@]}" --json "$RESULTS/eval-$name.json" > /dev/null
    if [ -f "$RUNS/$name-checkpoints/summary.json" ]; then cp "$RUNS/$name-checkpoints/summary.json" "$RESULTS/$name-summary.json"; fi
    if [ -f "$RUNS/$name.log" ]; then cp "$RUNS/$name.log" "$RESULTS/$name.log"; fi
done
"$PY" - "$RESULTS" <<'PY'
import json, sys
from pathlib import Path
for f in Path(sys.argv[1]).glob("*-summary.json"):  # the model stage's history at evaluations and every 100th step
    d = json.loads(f.read_text())
    d["history"] = [h for h in d.get("history", []) if h.get("stage") != "model" or "heldout_nll" in h or h["step"] % 100 == 0]
    f.write_text(json.dumps(d, indent=1))
for f in sorted(Path(sys.argv[1]).glob("eval-*.json")):
    print(f"{f.stem[5:]:24s} held-out perplexity {json.loads(f.read_text())['heldout_perplexity']:.2f}")
PY
