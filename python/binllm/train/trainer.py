"""The training loop: AdamW, linear warmup then cosine decay, gradient clipping, periodic
held-out evaluation, checkpoints that resume to the same step, data order and random state.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from binllm._core import InvalidArgumentError
from binllm.files import file_written_whole
from binllm.train.data import Batches
from binllm.train.model import BitNetLM, ModelConfig


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 16
    checkpoint_every: int = 100
    log_every: int = 10
    # Stop early (checkpointed, schedule unfinished) once training has run this long; 0 = no limit.
    time_budget_seconds: float = 0.0
    # Stop at this step (the schedule still planned for `steps`): replays a budget-stopped run.
    stop_at_step: int = 0


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to the peak, then cosine decay to `min_learning_rate_ratio` of it."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_learning_rate_ratio
    return cfg.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: BitNetLM, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay the weight matrices only; norms and embeddings are left alone.
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def evaluate(model: BitNetLM, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token negative log-likelihood (nats) over held-out windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        total += model.loss(batch).item() * batch[:, 1:].numel()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / max(1, count)


class Progress:
    """One status line: redrawn in place on a terminal, printed every `log_every` steps otherwise."""

    def __init__(self, total: int, log_every: int, label: str):
        self.total, self.log_every, self.label = total, log_every, label
        self.tty = sys.stderr.isatty()

    def update(self, step: int, **fields) -> None:
        if not self.tty and step % self.log_every and step != self.total:
            return
        done = step / self.total
        bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        line = f"{self.label} [{bar}] {step}/{self.total} {text}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(("\n" if self.tty else "") + f"{self.label} {text}", file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, batches: Batches, heldout: torch.Tensor, checkpoint_dir: str | Path, label: str = "train"):
        self.model_config, self.cfg = model_config, train_config
        torch.manual_seed(train_config.seed)
        self.model = BitNetLM(model_config)
        self.optimizer = make_optimizer(self.model, train_config)
        self.batches, self.heldout = batches, heldout
        self.checkpoint_path = Path(checkpoint_dir) / "checkpoint.pt"
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.label = label

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "data_rng": self.batches.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "model_config": self.model_config.to_dict(),
            "train_config": asdict(self.cfg),
        }
        with file_written_whole(self.checkpoint_path) as tmp:  # a crash mid-write never leaves a broken checkpoint
            torch.save(state, tmp)

    def resume(self) -> bool:
        """Loads the checkpoint if there is one; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, weights_only=False)
        if state["model_config"] != self.model_config.to_dict():
            raise InvalidArgumentError(f"{self.checkpoint_path} holds a model of another shape: {state['model_config']}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.train_seconds, self.history = state["train_seconds"], state["history"]
        self.batches.generator.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        return True

    def train(self) -> dict:
        cfg = self.cfg
        progress = Progress(cfg.steps, cfg.log_every, self.label)
        self.model.train()
        window_tokens = self.batches.batch_size * self.batches.context
        loss_ema = None
        stopped_early = False
        while self.step < cfg.steps:
            over_time = cfg.time_budget_seconds and self.train_seconds >= cfg.time_budget_seconds
            if over_time or (cfg.stop_at_step and self.step >= cfg.stop_at_step):
                why = f"time budget of {cfg.time_budget_seconds:.0f} s spent" if over_time else "--stop-at-step reached"
                progress.note(f"{why}: stopping at step {self.step} (replay with --stop-at-step {self.step})")
                self.save()
                stopped_early = True
                break
            started = time.perf_counter()
            lr = learning_rate(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = self.model.loss(self.batches.next())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            elapsed = time.perf_counter() - started
            self.step += 1
            self.tokens_seen += window_tokens
            self.train_seconds += elapsed
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            record = {"step": self.step, "loss": round(loss.item(), 4), "lr": lr, "grad_norm": round(float(grad_norm), 4)}
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps) and len(self.heldout):
                record["heldout_loss"] = round(evaluate(self.model, self.heldout[: cfg.eval_windows]), 4)
                progress.note(f"step {self.step}: held-out loss {record['heldout_loss']:.4f} (ppl {math.exp(record['heldout_loss']):.2f})")
            self.history.append(record)
            progress.update(self.step, loss=f"{loss_ema:.4f}", lr=f"{lr:.2e}", tok_s=f"{window_tokens / elapsed:.0f}")
            if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                self.save()
        if progress.tty:
            print(file=sys.stderr)
        return {"stopped_early": stopped_early, "steps": self.step, "tokens": self.tokens_seen, "train_seconds": round(self.train_seconds, 1), "final_loss_ema": loss_ema}
