"""`binllm train`: text files in, a ternary model in binllm's packed Hugging Face layout out.

    binllm train corpus/*.txt --out my-model --steps 2000 --twin

Steps: split each file into a training head and a held-out tail, train a byte-level BPE
tokenizer, train the BitNet b1.58 model (optionally its float twin at the same time in a
second process), report held-out perplexity, export the packed folder. Checkpoints go to
`--checkpoint-dir` (default: `<out>-checkpoints`); `--resume` continues from the last one.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from binllm._core import InvalidArgumentError
from binllm.extras import install_hint
from binllm.files import refuse_existing_folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="binllm train", description="Train a small BitNet b1.58 (ternary) model on text files and export it for binllm.")
    p.add_argument("files", nargs="+", help="UTF-8 text files")
    p.add_argument("--out", required=True, help="folder for the exported model (Hugging Face layout)")
    p.add_argument("--checkpoint-dir", help="checkpoints, tokenizer and training summary (default: <out>-checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--tokenizer", help="an existing tokenizer.json to use instead of training one")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--heldout-fraction", type=float, default=0.02, help="tail of each file kept out of training (default 0.02)")
    g = p.add_argument_group("model shape")
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--intermediate", type=int, default=None, help="default: 8/3 of hidden, rounded up to a multiple of 32")
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    g.add_argument("--context", type=int, default=256)
    g.add_argument("--rope-theta", type=float, default=10000.0)
    g.add_argument("--activation", choices=["relu2", "silu"], default="relu2",
                   help="MLP gate: relu2 (BitNet b1.58 2B4T) or silu (what llama.cpp's bitnet architecture runs)")
    g.add_argument("--float", dest="float_model", action="store_true",
                   help="train the float twin (plain Linear) instead; exported only with --arch llama")
    g.add_argument("--arch", choices=["bitnet", "llama"], default="bitnet",
                   help="bitnet (default): BitNet b1.58's sub-norms before o_proj and down_proj; llama: none, with --float "
                        "and --activation silu, exported as a float Llama folder that binllm quantize and binllm distill read")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=50)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--eval-windows", type=int, default=16, help="held-out windows for the periodic evaluation (the final one uses all)")
    g.add_argument("--checkpoint-every", type=int, default=100)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--stop-at-step", type=int, default=0, help="stop at this step, the schedule still planned for --steps (replays a run the time budget stopped)")
    g.add_argument("--time-budget-minutes", type=float, default=0.0, help="stop (and export) after this much training time, even before --steps")
    p.add_argument("--twin", action="store_true", help="also train the float twin (same shape, data, seed) concurrently in a second process")
    p.add_argument("--embedding-dtype", choices=["float16", "float32"], default="float16")
    return p


def _twin_argv(argv: list[str], tokenizer: Path, checkpoint_dir: Path) -> list[str]:
    # The same arguments, minus --twin and the output places, plus --float.
    drop_with_value = {"--out", "--checkpoint-dir", "--tokenizer"}
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--twin":
            continue
        if a in drop_with_value:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in drop_with_value):
            continue
        kept.append(a)
    twin_dir = checkpoint_dir / "float-twin"
    return kept + ["--float", "--out", str(twin_dir), "--checkpoint-dir", str(twin_dir), "--tokenizer", str(tokenizer)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        import torch
    except ImportError:
        print(install_hint("train", "binllm train needs PyTorch"), file=sys.stderr)
        return 2
    import numpy as np

    from binllm.train import data
    from binllm.train.export import export_float_llama, export_packed
    from binllm.train.model import ModelConfig
    from binllm.train.trainer import TrainConfig, Trainer, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    llama = args.arch == "llama"
    if llama and not (args.float_model and args.activation == "silu"):
        raise InvalidArgumentError("--arch llama trains a float Llama model: it needs --float and --activation silu")
    if llama and args.twin:
        raise InvalidArgumentError("--twin trains a ternary BitNet model's float twin; --arch llama is a float model already")
    exported = llama or not args.float_model
    if exported:
        refuse_existing_folder(out, "binllm train")
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + "-checkpoints")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    label = "float" if args.float_model else "ternary"
    started = time.time()

    train_texts, heldout_texts = data.read_texts(args.files, args.heldout_fraction)
    tokenizer_path = checkpoint_dir / "tokenizer.json"
    from tokenizers import Tokenizer

    if args.tokenizer:
        tokenizer = Tokenizer.from_file(args.tokenizer)
        if Path(args.tokenizer).resolve() != tokenizer_path.resolve():
            tokenizer.save(str(tokenizer_path))
    elif args.resume and tokenizer_path.exists():
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    else:
        tokenizer = data.train_tokenizer(train_texts, args.vocab_size)
        tokenizer.save(str(tokenizer_path))
    vocab = tokenizer.get_vocab_size()
    train_tokens = data.encode(tokenizer, train_texts)
    heldout_tokens = data.encode(tokenizer, heldout_texts)
    print(f"{label}: {sum(map(len, train_texts))} training characters -> {len(train_tokens)} tokens; "
          f"held out {sum(map(len, heldout_texts))} characters -> {len(heldout_tokens)} tokens; vocab {vocab}", file=sys.stderr)

    twin = None
    if args.twin and not args.float_model:
        twin_cmd = [sys.executable, "-m", "binllm.train.cli", *_twin_argv(argv, tokenizer_path, checkpoint_dir)]
        twin_log = open(checkpoint_dir / "float-twin.log", "a")
        twin = subprocess.Popen(twin_cmd, stdout=twin_log, stderr=subprocess.STDOUT)
        print(f"float twin started (pid {twin.pid}), log: {checkpoint_dir / 'float-twin.log'}", file=sys.stderr)

    intermediate = args.intermediate or -(-(args.hidden * 8 // 3) // 32) * 32
    model_config = ModelConfig(
        vocab_size=vocab, hidden_size=args.hidden, intermediate_size=intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=args.context, rope_theta=args.rope_theta, ternary=not args.float_model,
        hidden_act=args.activation, sub_norms=not llama,
    )
    train_config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, min_learning_rate_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
        eval_every=args.eval_every, eval_windows=args.eval_windows, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        time_budget_seconds=args.time_budget_minutes * 60, stop_at_step=args.stop_at_step,
    )
    batches = data.Batches(train_tokens, args.batch_size, args.context, args.seed)
    heldout = data.windows(heldout_tokens, args.context)
    trainer = Trainer(model_config, train_config, batches, heldout, checkpoint_dir, label=label)
    if args.resume and trainer.resume():
        print(f"{label}: resumed at step {trainer.step}", file=sys.stderr)
    print(f"{label}: parameters {trainer.model.count_parameters()}", file=sys.stderr)
    result = trainer.train()
    heldout_nll = evaluate(trainer.model, heldout)
    summary = {
        "kind": label,
        "model_config": model_config.to_dict(),
        "train_config": train_config.__dict__,
        "parameters": trainer.model.count_parameters(),
        "train_tokens_available": int(len(train_tokens)),
        "heldout_tokens": int(len(heldout_tokens)),
        "heldout_windows": int(len(heldout)),
        "heldout_nll": heldout_nll,
        "heldout_perplexity": math.exp(heldout_nll),
        "heldout_bits_per_character": heldout_nll * heldout[:, 1:].numel() / math.log(2) / max(1, sum(map(len, heldout_texts))) if len(heldout) else None,
        "wall_seconds": round(time.time() - started, 1),
        "threads": torch.get_num_threads(),
        **result,
    }
    print(f"{label}: held-out perplexity {summary['heldout_perplexity']:.3f} over {summary['heldout_windows']} windows", file=sys.stderr)
    if exported:
        if llama:
            export_float_llama(trainer.model, tokenizer_path, out)
        else:
            export_packed(trainer.model, tokenizer_path, out, embedding_dtype=np.dtype(args.embedding_dtype).type)
        print(f"exported {out}", file=sys.stderr)
    if twin is not None:
        print("waiting for the float twin ...", file=sys.stderr)
        twin.wait()
        twin_summary = checkpoint_dir / "float-twin" / "summary.json"
        if twin_summary.exists():
            summary["float_twin"] = json.loads(twin_summary.read_text())
            ratio = summary["heldout_perplexity"] / summary["float_twin"]["heldout_perplexity"]
            summary["perplexity_ratio_ternary_over_float"] = ratio
            print(f"float twin: held-out perplexity {summary['float_twin']['heldout_perplexity']:.3f}; ternary/float {ratio:.3f}", file=sys.stderr)
    (checkpoint_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
