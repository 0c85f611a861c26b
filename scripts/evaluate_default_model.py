"""Held-out perplexity of an exported model run by binllm itself (packed ternary kernels, int8
activations, float16 embeddings), on the same held-out tails `binllm train` kept out.

    python scripts/evaluate_default_model.py MODEL_DIR corpus/*.txt [--heldout-fraction 0.02] [--json OUT]

Protocol: each file's tail, tokenized and joined with `</s>` as in training, cut into
non-overlapping windows of the model's context; mean next-token NLL over every window.
Also prints the model's storage (true bits per weight, every scale counted).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import binllm
import numpy as np
from binllm.train import data


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("files", nargs="+")
    p.add_argument("--heldout-fraction", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    model = binllm.Model.from_pretrained(args.model, threads=args.threads)
    context = model.config["max_position_embeddings"]
    _, heldout_texts = data.read_texts(args.files, args.heldout_fraction)
    tokens = data.encode(model.tokenizer, heldout_texts)
    windows = data.windows(tokens, context).numpy()
    started = time.perf_counter()
    total, count = 0.0, 0
    for w in windows:
        logits = np.asarray(model.logits(w[:-1].tolist()), np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= logp[np.arange(context), w[1:]].sum()
        count += context
    nll = total / count
    result = {
        "heldout_windows": len(windows),
        "heldout_tokens_scored": count,
        "heldout_nll": nll,
        "heldout_perplexity": math.exp(nll),
        "seconds": round(time.perf_counter() - started, 1),
        "info": model.info(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "info"}, indent=2))
    print(json.dumps(result["info"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
