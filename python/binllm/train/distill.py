"""`binllm distill`: binarize a float model by training the binarized student to reproduce it.

    binllm distill SmolLM2.gguf --out smollm2-t2 --text corpus/*.txt --heldout hamlet.txt \\
        --format t2 --init gptq-ternary --group-size 256 --minutes 60

The path between post-training binarization (`binllm quantize`) and training from scratch
(`binllm train`), after OneBit's and BitDistill's knowledge distillation and EfficientQAT's
block-wise training:

- the student starts from a PTQ result of the teacher (`--init` METHOD runs `binllm quantize`
  once; `--init` FOLDER reads a folder it wrote): each decoder linear keeps latent float
  weights whose codes are the PTQ codes, and its scales (per tensor, row or group; OneBit/ARB
  column scales and row offsets) as trained parameters;
- every forward pass runs what binllm's kernels run: codes `clip(round(W / s), -1, 1)` (t2) or
  `sign(W)` (b1) times float16-rounded scales, per-token int8 activations (of `x * col_scale`
  when the layer has column scales), plus `row_offset * sum(x)`; the straight-through
  estimator passes gradients through every rounding (to the scales as in LSQ);
- stage `blocks`: block l is trained alone to reproduce the float block's output on the
  teacher's activations (normalized by the block's own contribution, `||T(x) - x||^2`);
- stage `model`: the whole student against the teacher's logits (KL divergence, teacher run on
  the fly), optionally plus a per-layer hidden-state loss;
- embeddings and norms: embeddings (and the output layer) stay frozen at their stored
  precision (float16, or 8-bit with `--keep embed`), norms train; `--keep` blocks stay at 8
  bits (frozen);
- a time (`--minutes`) or token (`--tokens`) budget, checkpoints after each block and every
  `--checkpoint-every` steps with exact resumption (`--resume`), progress with loss, tokens/s
  and held-out perplexity, on a GPU when torch sees one;
- the result is a binllm PTQ folder (`quantization_config.method = "distill"`) and, for t2,
  GGUF TQ2_0 (`--gguf`), which `generate`, the browser build and llama.cpp run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from binllm import _core
from binllm._core import FileError, InvalidArgumentError, ModelFormatError, UnsupportedError
from binllm.files import file_written_whole, refuse_existing_folder
from binllm.quantize import Q8_BLOCK, _write_folder, _write_gguf, parse_keep, q8_blocks, q8_dequant, quantize_model
from binllm.quantize.methods import CODE_BITS, FORMAT_OF, SCALE_BITS, Quantized
from binllm.quantize.source import Source, read_source
from binllm.train.bitlinear import activation_codes, quantize_activation
from binllm.train.model import BitNetLM, ModelConfig, RMSNorm
from binllm.train.trainer import evaluate

FORMATS = ("t2", "b1")
INITS = {"t2": ("absmean", "gptq-ternary"), "b1": ("sign", "onebit", "arb")}
STAGES = ("blocks", "model")
# Smallest scale a step may reach: float16's smallest normal number (a stored scale is float16).
MIN_SCALE = 2.0**-14


def _f16(t: torch.Tensor) -> torch.Tensor:
    """`t` rounded to float16 in the forward pass, unchanged in the backward pass."""
    return t + (t.half().float() - t).detach()


def _codes(r: torch.Tensor, fmt: str) -> torch.Tensor:
    """Codes of latent weights in units of their scale: t2 clip(round(r), -1, 1), b1 sign (0 -> +1)."""
    if fmt == "t2":
        return r.round().clamp(-1, 1)
    return torch.where(r >= 0, 1.0, -1.0)


def _expand(s: torch.Tensor, n: int, k: int, group_size: Optional[int]) -> torch.Tensor:
    """A scale of shape (), (n,) or (n, groups) broadcastable to (n, k)."""
    if s.ndim == 0:
        return s
    if s.ndim == 1:
        return s[:, None]
    return s.repeat_interleave(group_size, dim=1)[:, :k]


def _integer_sums(q: torch.Tensor, c: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    """Exact sums of int8 activations (m, k) times codes (n, k): (m, n), or (m, n, groups) with
    per-group scales (oneDNN's int8 GEMM, VNNI/AMX where the CPU has them; integer-valued float32
    on other devices, exact below 2^24)."""
    k = q.shape[1]
    spans = [(0, k)] if group_size is None else [(g, min(g + group_size, k)) for g in range(0, k, group_size)]
    if q.device.type == "cpu":
        sums = [torch._int_mm(q[:, a:b].contiguous(), c[:, a:b].t()).float() for a, b in spans]
    else:
        sums = [q[:, a:b].float() @ c[:, a:b].float().t() for a, b in spans]
    return sums[0] if group_size is None else torch.stack(sums, dim=-1)


def _half_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in bfloat16 with a float32 result: the backward pass's products (gradients need no
    more precision; bfloat16 runs several times faster on CPUs with AMX or AVX-512 BF16)."""
    return (a.bfloat16() @ b.bfloat16()).float()


class _PackedLinear(torch.autograd.Function):
    """The forward pass of a StudentLinear in binllm's integer arithmetic (int8 activations times
    codes, summed exactly, then scaled), and its straight-through backward pass, without
    autograd's (n x k) temporaries. `StudentLinear.reference` is the same function in autograd."""

    @staticmethod
    def forward(ctx, x, weight, scale, col_scale, row_offset, fmt, group_size):
        n, k = weight.shape
        x2 = x.reshape(-1, k).float()
        col = None if col_scale is None else col_scale.half().float()
        xin = x2 * col if col is not None else x2
        q, sx = activation_codes(xin)
        q = q.to(torch.int8)
        s = scale.clamp(min=MIN_SCALE).half().float()
        c = _codes(weight / _expand(s, n, k, group_size), fmt).to(torch.int8)
        sums = _integer_sums(q, c, group_size)
        if group_size is None:
            y = sums * (s if s.ndim == 0 else s[None, :])
        else:
            y = (sums * s[None]).sum(-1)
        y = y / sx
        off = None if row_offset is None else row_offset.half().float()
        if off is not None:
            y = y + x2.sum(-1, keepdim=True) * off
        ctx.save_for_backward(x2, q, sx, weight, scale, col_scale, row_offset)
        ctx.fmt, ctx.group_size, ctx.shape = fmt, group_size, x.shape
        return y.reshape(*x.shape[:-1], n)

    @staticmethod
    def backward(ctx, grad_y):
        x2, q, sx, weight, scale, col_scale, row_offset = ctx.saved_tensors
        n, k = weight.shape
        g = grad_y.reshape(-1, n).float()
        s = scale.clamp(min=MIN_SCALE).half().float()
        se = _expand(s, n, k, ctx.group_size)
        r = weight / se
        c = _codes(r, ctx.fmt)
        grad_xin = _half_matmul(g, c * se)
        grad_w = _half_matmul(g.t(), q.float() / sx)
        d = grad_w * (c - r)  # d(codes * s) / ds, straight through the rounding
        if scale.ndim == 0:
            grad_s = d.sum()
        elif scale.ndim == 1:
            grad_s = d.sum(1)
        else:
            groups = scale.shape[1]
            grad_s = F.pad(d, (0, groups * ctx.group_size - k)).reshape(n, groups, ctx.group_size).sum(-1)
        grad_x, grad_col, grad_off = grad_xin, None, None
        if col_scale is not None:
            grad_col = (grad_xin * x2).sum(0)
            grad_x = grad_xin * col_scale.half().float()
        if row_offset is not None:
            grad_off = (g * x2.sum(-1, keepdim=True)).sum(0)
            grad_x = grad_x + (g @ row_offset.half().float())[:, None]
        return grad_x.reshape(ctx.shape), grad_w, grad_s, grad_col, grad_off, None, None


class StudentLinear(nn.Module):
    """A binarized linear with latent weights and trainable scales, computing what binllm's
    packed kernels compute (see the module docstring)."""

    def __init__(self, fmt: str, latent: torch.Tensor, scale: torch.Tensor, group_size: Optional[int], col_scale: Optional[torch.Tensor], row_offset: Optional[torch.Tensor]):
        super().__init__()
        if fmt not in FORMATS:
            raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
        self.format, self.group_size = fmt, group_size
        self.weight = nn.Parameter(latent)
        self.scale = nn.Parameter(scale)
        self.col_scale = nn.Parameter(col_scale) if col_scale is not None else None
        self.row_offset = nn.Parameter(row_offset) if row_offset is not None else None

    def expanded_scale(self) -> torch.Tensor:
        n, k = self.weight.shape
        return _expand(_f16(self.scale.clamp(min=MIN_SCALE)), n, k, self.group_size)

    def effective_weight(self) -> torch.Tensor:
        """codes * scale, with straight-through gradients to the latent weights and the scale."""
        s = self.expanded_scale()
        r = self.weight / s
        return s * (r + (_codes(r, self.format) - r).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PackedLinear.apply(x, self.weight, self.scale, self.col_scale, self.row_offset, self.format, self.group_size)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same function in plain autograd (float matmul of dequantized values): what the
        tests hold `forward` and its gradients to."""
        xin = x * _f16(self.col_scale) if self.col_scale is not None else x
        y = F.linear(quantize_activation(xin), self.effective_weight())
        if self.row_offset is not None:
            y = y + x.sum(-1, keepdim=True) * _f16(self.row_offset)
        return y

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        return _codes(self.weight / self.expanded_scale(), self.format).to(torch.int8)

    @torch.no_grad()
    def stored(self) -> Quantized:
        """The stored form binllm's folder writer takes (codes, float16-exact scales)."""

        def f16(t):
            return None if t is None else t.detach().float().cpu().half().float().numpy()

        codes = self.codes().cpu().numpy()
        scale = f16(self.scale.clamp(min=MIN_SCALE))
        col, off = f16(self.col_scale), f16(self.row_offset)
        n, k = codes.shape
        stored_values = scale.size + (0 if col is None else col.size) + (0 if off is None else off.size)
        bits = (n * k * CODE_BITS[self.format] + SCALE_BITS * stored_values) / (n * k)
        w_hat = (self.effective_weight() * (1 if self.col_scale is None else _f16(self.col_scale)[None, :])).detach().cpu().numpy()
        if off is not None:
            w_hat = w_hat + off[:, None]
        return Quantized("distill", w_hat.astype(np.float32), bits, self.format, codes, scale, self.group_size, col, off)


def model_config(src: Source) -> ModelConfig:
    """The teacher's shape as the training graph's config; what it does not implement is refused."""
    c = src.config
    where = str(src.path)
    arch = c.get("model_type")
    if arch != "llama":
        raise UnsupportedError(f"{where}: binllm distill reads float Llama-family teachers (model_type 'llama'), not '{arch}'")
    for key in ("rope_scaling", "attention_bias", "mlp_bias"):
        if c.get(key):
            raise UnsupportedError(f"{where}: config '{key}' = {c[key]!r} is not implemented by the distillation graph")
    act = c.get("hidden_act", "silu")
    if act not in ("silu", "relu2"):
        raise UnsupportedError(f"{where}: hidden_act '{act}' (the distillation graph runs silu or relu2)")
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    if int(c.get("head_dim") or hidden // heads) * heads != hidden:
        raise UnsupportedError(f"{where}: head_dim {c.get('head_dim')} x {heads} heads differs from hidden_size {hidden}")
    return ModelConfig(
        vocab_size=int(c["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(c["intermediate_size"]),
        num_hidden_layers=int(c["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(c.get("num_key_value_heads") or heads),
        max_position_embeddings=int(c.get("max_position_embeddings", 2048)),
        rope_theta=float(c.get("rope_theta", 10000.0)),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        ternary=False,
        hidden_act=act,
        sub_norms=False,
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def teacher_model(src: Source, cfg: ModelConfig) -> BitNetLM:
    """The float teacher (frozen, eval mode) with the source's weights."""
    model = BitNetLM(cfg, linear=lambda i, o: nn.Linear(i, o, bias=False))
    state = {name: torch.from_numpy(np.ascontiguousarray(arr, np.float32)) for name, arr in src.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ModelFormatError(f"{src.path}: tensor '{unexpected[0]}' is not part of a Llama-family model (distill does not drop weights)")
    if missing:
        raise ModelFormatError(f"{src.path}: missing tensor '{missing[0]}'")
    model.requires_grad_(False)
    return model.eval()


@dataclass
class InitLayer:
    kind: str  # "q" (binarized) or "q8" (kept at 8 bits)
    fmt: Optional[str] = None
    codes: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None
    group_size: Optional[int] = None
    col_scale: Optional[np.ndarray] = None
    row_offset: Optional[np.ndarray] = None
    q8: Optional[tuple[np.ndarray, np.ndarray]] = None


@dataclass
class Init:
    label: str
    layers: dict[str, InitLayer]
    keep: list[str] = field(default_factory=list)  # quantization_config.keep of the folder


def read_init(folder: Path, src: Source) -> Init:
    """The codes and scales of a folder `binllm quantize` wrote from the same teacher."""
    from safetensors.numpy import load_file

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (--init takes a method name or a folder binllm quantize wrote)")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != "binllm" or not isinstance(qc.get("layers"), dict):
        raise ModelFormatError(f"{folder}: not a binllm quantize folder (quantization_config.quant_method 'binllm' with layers)")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if config.get(key) != src.config.get(key):
            raise ModelFormatError(f"{folder}: {key} {config.get(key)} differs from the teacher's {src.config.get(key)}")
    tensors = load_file(str(folder / "model.safetensors"))
    layers: dict[str, InitLayer] = {}
    for name, _, _ in src.linear_names():
        spec = qc["layers"].get(name)
        if spec is None:
            raise UnsupportedError(f"{folder}: '{name}' is stored as float16 (method {qc.get('method')}); distill starts from t2 or b1 codes")
        fmt = spec.get("format")
        w = tensors.get(f"{name}.weight")
        if w is None:
            raise ModelFormatError(f"{folder}: missing tensor '{name}.weight'")
        k = src.tensors[f"{name}.weight"].shape[1]
        if fmt == "q8":
            layers[name] = InitLayer("q8", q8=(w, tensors[f"{name}.weight_scale"]))
            continue
        if fmt not in FORMATS:
            raise UnsupportedError(f"{folder}: '{name}' has format '{fmt}'; distill trains t2 or b1")
        scale = tensors[f"{name}.weight_scale"].astype(np.float32)
        if scale.shape == (1,):
            scale = scale.reshape(())
        col, off = tensors.get(f"{name}.weight_col_scale"), tensors.get(f"{name}.weight_row_offset")
        layers[name] = InitLayer(
            "q", fmt, _core.unpack_codes(fmt, np.ascontiguousarray(w), k), scale, spec.get("group_size"),
            None if col is None else col.astype(np.float32), None if off is None else off.astype(np.float32),
        )
    return Init(str(qc.get("method")), layers, [str(x) for x in qc.get("keep") or []])


def latent_weights(w: np.ndarray, layer: InitLayer) -> np.ndarray:
    """Latent weights whose codes are the init's: the teacher's weights (offset and column
    scale taken out) where their code agrees, the code's own value elsewhere."""
    n, k = w.shape
    s = _expand(torch.from_numpy(np.asarray(layer.scale, np.float32)), n, k, layer.group_size).numpy()
    s = np.broadcast_to(np.maximum(s, MIN_SCALE), (n, k))
    target = w.astype(np.float32)
    if layer.row_offset is not None:
        target = target - layer.row_offset[:, None]
    if layer.col_scale is not None:
        col = layer.col_scale[None, :]
        target = np.divide(target, col, out=np.zeros_like(target), where=col != 0)
    codes = layer.codes.astype(np.float32)
    own = _codes(torch.from_numpy(target / s), layer.fmt).numpy()
    return np.where(own == codes, target, codes * s).astype(np.float32)


def _tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else torch.from_numpy(np.array(a, np.float32))


def _stored_float(w: torch.Tensor, eight_bit: bool) -> torch.Tensor:
    """A float tensor as the folder stores it: 8-bit blocks or float16."""
    a = w.detach().cpu().numpy()
    return torch.from_numpy(q8_dequant(*q8_blocks(a)) if eight_bit else a.astype(np.float16).astype(np.float32))


def student_model(teacher: BitNetLM, src: Source, init: Init, keep_embed: bool, keep_output: bool) -> BitNetLM:
    """The student: the teacher's graph with every decoder linear binarized (or kept at 8 bits),
    embeddings and output layer frozen at their stored precision, norms trainable."""
    student = copy.deepcopy(teacher)
    tied = teacher.config.tie_word_embeddings
    with torch.no_grad():
        emb = student.model.embed_tokens.weight
        emb.copy_(_stored_float(emb, keep_embed or (tied and keep_output)))
        if not tied:
            student.lm_head.weight.copy_(_stored_float(student.lm_head.weight, keep_output))
    for name, _, _ in src.linear_names():
        layer = init.layers[name]
        parent, attr = name.rsplit(".", 1)
        if layer.kind == "q8":
            frozen = nn.Linear(1, 1, bias=False)
            frozen.weight = nn.Parameter(torch.from_numpy(q8_dequant(*layer.q8)), requires_grad=False)
            module: nn.Module = frozen
        else:
            w = src.tensors[f"{name}.weight"]
            module = StudentLinear(layer.fmt, torch.from_numpy(latent_weights(w, layer)), _tensor(layer.scale), layer.group_size, _tensor(layer.col_scale), _tensor(layer.row_offset))
        setattr(student.get_submodule(parent), attr, module)
    student.requires_grad_(False)
    for n, p in student.named_parameters():
        if isinstance(student.get_submodule(n.rsplit(".", 1)[0]), StudentLinear) or n.endswith("norm.weight"):
            p.requires_grad_(True)
    return student.train()


def param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters of `module` in optimizer groups, each with `lr_scale`: the mean
    magnitude of what it scales (a linear's weight scale, a norm's weights). Learning rates are
    relative to it (a step of `lr` moves a latent weight by about lr of its layer's scale), so
    one setting suits layers and models whose weights differ in size."""
    groups: list[dict[str, Any]] = []
    for mod in module.modules():
        if isinstance(mod, StudentLinear):
            size = float(mod.scale.detach().abs().mean())
            groups.append({"params": [p for p in (mod.weight, mod.scale, mod.row_offset) if p is not None], "lr_scale": size})
            if mod.col_scale is not None:
                groups.append({"params": [mod.col_scale], "lr_scale": float(mod.col_scale.detach().abs().mean())})
        elif isinstance(mod, RMSNorm) and mod.weight.requires_grad:
            groups.append({"params": [mod.weight], "lr_scale": float(mod.weight.detach().abs().mean())})
    return groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def forward_hidden(model: BitNetLM, tokens: torch.Tensor, bf16_head: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, each block's output). `bf16_head` runs the output layer's product in bfloat16
    (float32 result): at a 49k vocabulary it is a third of a training step in float32."""
    x = model.model.embed_tokens(tokens)
    cos, sin = model.rope(tokens.shape[1], tokens.device)
    hidden = []
    for layer in model.model.layers:
        x = layer(x, cos, sin)
        hidden.append(x)
    if not bf16_head:
        return model.logits(x), hidden
    head = model.model.embed_tokens.weight if model.config.tie_word_embeddings else model.lm_head.weight
    return F.linear(model.model.norm(x).bfloat16(), head.bfloat16()).float(), hidden


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) in nats, both softened by `temperature`."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


@torch.no_grad()
def block_error(block: nn.Module, x: torch.Tensor, y: torch.Tensor, cos, sin, batch: int = 8) -> float:
    """||B(x) - y||^2 / ||y - x||^2: the block's output error relative to its own contribution."""
    err = ref = 0.0
    for i in range(0, len(x), batch):
        out = block(x[i : i + batch], cos, sin)
        err += (out - y[i : i + batch]).pow(2).sum().item()
        ref += (y[i : i + batch] - x[i : i + batch]).pow(2).sum().item()
    return err / max(ref, 1e-30)


@dataclass
class DistillConfig:
    stages: tuple[str, ...] = STAGES
    minutes: float = 0.0  # total time budget (0: none)
    tokens: int = 0  # model-stage token budget (0: from minutes)
    block_share: float = 0.2  # share of --minutes for the block stage when both stages run
    block_steps: int = 100  # optimizer steps per block (at most; --minutes may stop a block sooner)
    block_windows: int = 64  # teacher activation windows held for the block stage
    block_batch: int = 4
    # Learning rates are relative: a step moves a weight by about lr of its layer's scale.
    block_lr: float = 5e-3
    ctx: int = 256
    batch_size: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    grad_clip: float = 1.0
    temperature: float = 1.0
    hidden_loss: float = 0.0
    eval_every: int = 50
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    # The teacher's forward pass and the student's output layer in bfloat16 (training only;
    # held-out perplexities are float32).
    bf16: bool = True
    stop_at_step: int = 0  # stop the model stage at this step (the schedule unchanged)


class Distiller:
    """Runs the stages, keeps the history, checkpoints and resumes."""

    def __init__(self, teacher: BitNetLM, student: BitNetLM, train_tokens: np.ndarray, heldout: torch.Tensor, cfg: DistillConfig, checkpoint_dir: Path, device: torch.device, say: Callable[[str], None]):
        self.teacher, self.student, self.cfg = teacher.to(device), student.to(device), cfg
        self.tokens = torch.from_numpy(train_tokens.astype(np.int64))
        if len(self.tokens) <= cfg.ctx + 1:
            raise InvalidArgumentError(f"{len(self.tokens)} training tokens do not fill one window of {cfg.ctx + 1}")
        self.heldout, self.device, self.say = heldout.to(device), device, say
        self.checkpoint_path = Path(checkpoint_dir) / "distill-checkpoint.pt"
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.blocks_done = 0
        self.step = 0
        self.tokens_seen = 0
        self.seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.warned_rising = False
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(self.student), lr=self.cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "student": {k: v for k, v in self.student.state_dict().items() if "embed_tokens" not in k and not k.startswith("lm_head")},
            "optimizer": self.optimizer.state_dict(),
            "blocks_done": self.blocks_done,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "seconds": self.seconds,
            "history": self.history,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.__dict__,
        }
        with file_written_whole(self.checkpoint_path) as tmp:  # a crash mid-write never leaves a broken checkpoint
            torch.save(state, tmp)

    def resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, weights_only=False, map_location=self.device)
        missing, unexpected = self.student.load_state_dict(state["student"], strict=False)
        if unexpected or any("embed_tokens" not in k and not k.startswith("lm_head") for k in missing):
            raise InvalidArgumentError(f"{self.checkpoint_path} holds another student (different shape, format or --keep)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.blocks_done, self.step, self.tokens_seen = state["blocks_done"], state["step"], state["tokens_seen"]
        self.seconds, self.history = state["seconds"], state["history"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return True

    # -- budgets --------------------------------------------------------------------------
    def _model_steps(self) -> int:
        per_step = self.cfg.batch_size * self.cfg.ctx
        return max(1, -(-self.cfg.tokens // per_step)) if self.cfg.tokens else 0

    def _block_seconds(self) -> float:
        cfg = self.cfg
        if not cfg.minutes or "blocks" not in cfg.stages:
            return 0.0
        share = cfg.block_share if "model" in cfg.stages else 1.0
        return cfg.minutes * 60 * share / self.student.config.num_hidden_layers

    def _windows(self, count: int) -> torch.Tensor:
        starts = torch.randint(0, len(self.tokens) - self.cfg.ctx - 1, (count,), generator=self.generator)
        return torch.stack([self.tokens[s : s + self.cfg.ctx + 1] for s in starts.tolist()])

    def _eval(self, where: str) -> float:
        nll = evaluate(self.student, self.heldout)
        self.say(f"{where}: held-out perplexity {math.exp(nll):.2f}")
        return nll

    def _warn_if_rising(self, nll: float) -> None:
        """Says once when the held-out perplexity has risen 10% above the best so far: the
        model stage is diverging, most often from a learning rate too high for this model."""
        best = min((h["heldout_nll"] for h in self.history if "heldout_nll" in h), default=None)
        if best is None or nll <= best + math.log(1.1) or self.warned_rising:
            return
        self.warned_rising = True
        self.say(f"warning: held-out perplexity {math.exp(nll):.2f} is {math.exp(nll - best):.2f}x the best so far ({math.exp(best):.2f}); "
                 f"the model stage is diverging: try a lower --lr than {self.cfg.lr:g}")

    # -- stages ---------------------------------------------------------------------------
    def run_blocks(self) -> None:
        cfg = self.cfg
        layers = self.student.config.num_hidden_layers
        if self.blocks_done >= layers:
            return
        # The windows of teacher activations, and each block's minibatch order, come from
        # generators of their own seeded from --seed: a resumed stage draws the same ones.
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        starts = torch.randint(0, len(self.tokens) - cfg.ctx - 1, (cfg.block_windows,), generator=gen)
        windows = torch.stack([self.tokens[s : s + cfg.ctx] for s in starts.tolist()]).to(self.device)
        held = max(1, cfg.block_windows // 8)  # the last windows measure each block's error
        t = self.teacher
        cos, sin = t.rope(cfg.ctx, self.device)
        with torch.no_grad():
            x = t.model.embed_tokens(windows)
        budget = self._block_seconds()
        for layer in range(layers):
            with torch.no_grad():
                y = torch.cat([t.model.layers[layer](x[i : i + 8], cos, sin) for i in range(0, len(x), 8)])
            if layer < self.blocks_done:
                x = y
                continue
            gen = torch.Generator().manual_seed(cfg.seed + 2 + layer)
            block = self.student.model.layers[layer]
            params = [p for p in block.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(param_groups(block), lr=cfg.block_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
            set_lr(opt, cfg.block_lr)
            train_x, train_y, ref = x[:-held], y[:-held], (y[:-held] - x[:-held]).pow(2).mean()
            before = block_error(block, x[-held:], y[-held:], cos, sin)
            start_state = copy.deepcopy(block.state_dict())
            started, steps = time.perf_counter(), 0
            for _ in range(cfg.block_steps):
                if budget and time.perf_counter() - started >= budget:
                    break
                idx = torch.randint(0, len(train_x), (cfg.block_batch,), generator=gen)
                loss = (block(train_x[idx], cos, sin) - train_y[idx]).pow(2).mean() / ref
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                steps += 1
            elapsed = time.perf_counter() - started
            after = block_error(block, x[-held:], y[-held:], cos, sin)
            # A block whose held-out error grew keeps its start: the stage never hands the
            # model stage a block worse than the PTQ result it began from.
            kept_start = after > before
            if kept_start:
                block.load_state_dict(start_state)
            self.seconds += elapsed
            self.blocks_done = layer + 1
            record = {"stage": "blocks", "block": layer, "steps": steps, "error_before": round(before, 5), "error_after": round(after, 5),
                      "kept_start": kept_start, "seconds": round(elapsed, 1)}
            self.history.append(record)
            self.say(f"block {layer + 1}/{layers}: output error {before:.4f} -> {after:.4f} ({steps} steps, {elapsed:.0f} s)"
                     + ("; worse, so the block keeps its start" if kept_start else ""))
            self.save()
            x = y
        self.optimizer = self._optimizer()  # the model stage starts with fresh moments
        self.history.append({"stage": "blocks-done", "heldout_nll": round(self._eval("after the block stage"), 4), "seconds": round(self.seconds, 1)})
        self.save()

    def _lr(self, total_steps: int, deadline: float) -> float:
        cfg = self.cfg
        if self.step < cfg.warmup:
            return cfg.lr * (self.step + 1) / cfg.warmup
        if total_steps:
            progress = (self.step - cfg.warmup) / max(1, total_steps - cfg.warmup)
        else:
            progress = min(1.0, self.seconds / deadline) if deadline else 0.0
        floor = cfg.min_lr_ratio
        return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def run_model(self) -> bool:
        """Returns whether the budget ran out before the planned steps (stopped early)."""
        cfg = self.cfg
        total_steps = self._model_steps()
        deadline = cfg.minutes * 60 if cfg.minutes else 0.0
        if not total_steps and not deadline:
            raise InvalidArgumentError("the model stage needs a budget: --tokens N or --minutes M")
        per_step = cfg.batch_size * cfg.ctx
        loss_ema = None
        while True:
            if total_steps and self.step >= total_steps:
                return False
            if deadline and self.seconds >= deadline:
                self.say(f"time budget spent at step {self.step} ({self.tokens_seen} tokens)")
                return True
            if cfg.stop_at_step and self.step >= cfg.stop_at_step:
                self.say(f"--stop-at-step reached: step {self.step}")
                return True
            started = time.perf_counter()
            lr = self._lr(total_steps, deadline)
            set_lr(self.optimizer, lr)
            batch = self._windows(cfg.batch_size).to(self.device)
            inputs = batch[:, :-1]
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                t_logits, t_hidden = forward_hidden(self.teacher, inputs)
            t_logits, t_hidden = t_logits.float(), [h.float() for h in t_hidden]
            s_logits, s_hidden = forward_hidden(self.student, inputs, bf16_head=cfg.bf16)
            kl = kl_to_teacher(s_logits, t_logits, cfg.temperature)
            loss = kl
            if cfg.hidden_loss:
                hidden = sum((s - t).pow(2).mean() / t.pow(2).mean() for s, t in zip(s_hidden, t_hidden)) / len(s_hidden)
                loss = loss + cfg.hidden_loss * hidden
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.optimizer.step()
            elapsed = time.perf_counter() - started
            self.step += 1
            self.tokens_seen += per_step
            self.seconds += elapsed
            loss_ema = kl.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * kl.item()
            record: dict[str, Any] = {"stage": "model", "step": self.step, "tokens": self.tokens_seen, "kl": round(kl.item(), 5), "lr": lr, "seconds": round(self.seconds, 1)}
            last = (total_steps and self.step >= total_steps) or (deadline and self.seconds >= deadline)
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                record["heldout_nll"] = round(self._eval(f"step {self.step} ({self.tokens_seen} tokens)"), 4)
                self._warn_if_rising(record["heldout_nll"])
            self.history.append(record)
            if cfg.log_every and self.step % cfg.log_every == 0:
                self.say(f"step {self.step}{'/' + str(total_steps) if total_steps else ''}: KL {loss_ema:.4f} lr {lr:.2e} {per_step / elapsed:.0f} tok/s")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()


def student_results(student: BitNetLM, src: Source) -> dict[str, tuple[str, Any]]:
    """Each decoder linear's stored form, as `binllm quantize`'s folder writer takes it."""
    results: dict[str, tuple[str, Any]] = {}
    for name, _, _ in src.linear_names():
        module = student.get_submodule(name)
        if isinstance(module, StudentLinear):
            results[name] = ("q", module.stored())
        else:
            results[name] = ("q8", q8_blocks(module.weight.detach().cpu().numpy()))
    return results


def export(student: BitNetLM, src: Source, dst: Path, info: dict[str, Any], keep_blocks: set[int], keep_embed: bool, keep_output: bool, gguf: Optional[Path], say: Callable[[str], None]) -> dict[str, Any]:
    """Writes the student as a binllm PTQ folder (and GGUF TQ2_0 for t2); returns a report."""
    results = student_results(student, src)
    tensors = dict(src.tensors)
    for name, p in student.named_parameters():
        if name.endswith("norm.weight"):
            tensors[name] = p.detach().float().cpu().numpy().copy()
    entries: dict[str, dict[str, Any]] = {}
    bits = params = 0.0
    for name, (kind, payload) in results.items():
        n, k = src.tensors[f"{name}.weight"].shape
        if kind == "q8":
            entries[name] = {"format": "q8"}
            bits += n * k * (8 + 32 / Q8_BLOCK)
        else:
            entries[name] = {"format": payload.format, **({"group_size": payload.group_size} if payload.group_size else {})}
            bits += n * k * payload.bits_per_weight
        params += n * k
    qc = {
        "quant_method": "binllm",
        "method": "distill",
        "bits_per_weight": bits / params,
        "keep": sorted(str(b) for b in keep_blocks) + (["embed"] if keep_embed else []) + (["output"] if keep_output else []),
        "calibration": None,
        "distillation": info,
        "layers": entries,
    }
    _write_folder(dst, Source(src.path, src.config, tensors, src.files), results, qc, keep_embed, keep_output)
    report = {"output": str(dst), "method_bits_per_weight": qc["bits_per_weight"]}
    if gguf is not None:
        report["gguf"] = _write_gguf(dst, gguf, say)
    return report


def tokenize(tokenizer_json: str, texts: list[str]) -> np.ndarray:
    """The texts as one token stream with the teacher's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    parts = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        chunks = ["".join(lines[i : i + 2000]) for i in range(0, len(lines), 2000)]
        for enc in tok.encode_batch(chunks, add_special_tokens=False):
            parts.append(np.asarray(enc.ids, np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="binllm distill", description="Binarize a float model by distillation: a t2/b1 student, started from a PTQ result, trained to reproduce its teacher.")
    p.add_argument("teacher", help="float Llama-family model: Hugging Face folder or GGUF file")
    p.add_argument("--out", required=True, help="folder for the student (binllm's PTQ layout; must not exist)")
    p.add_argument("--text", nargs="+", required=True, help="UTF-8 training text files")
    p.add_argument("--heldout", nargs="*", default=None, help="held-out text for perplexity (default: the tail of each --text file)")
    p.add_argument("--heldout-fraction", type=float, default=0.02)
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens evaluated (windows of --ctx)")
    p.add_argument("--format", choices=FORMATS, default=None, help="t2 (ternary) or b1 (binary); default from --init, else t2")
    p.add_argument("--init", default=None, help="PTQ method (t2: absmean, gptq-ternary; b1: sign, onebit, arb) or a folder binllm quantize wrote (default: absmean for t2, arb for b1)")
    p.add_argument("--group-size", type=int, default=None, help="scale group size for absmean/sign/gptq-ternary inits")
    p.add_argument("--scale", choices=("absmean", "mse"), default=None, help="ternary scale rule of the init")
    p.add_argument("--calib", default=None, help="calibration text for Hessian inits (default: the first --text file)")
    p.add_argument("--calib-tokens", type=int, default=4096)
    p.add_argument("--keep", action="append", default=[], help="kept at 8 bits and frozen: embed, output, first, last, block numbers")
    p.add_argument("--stage", default="blocks,model", help="stages in order: blocks, model, or both (default)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training time budget, both stages together")
    budget.add_argument("--tokens", type=int, help="model-stage token budget (the block stage runs --block-steps per block)")
    g = p.add_argument_group("optimization")
    d = DistillConfig()
    g.add_argument("--ctx", type=int, default=d.ctx)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--block-lr", type=float, default=d.block_lr)
    g.add_argument("--block-steps", type=int, default=d.block_steps)
    g.add_argument("--block-share", type=float, default=d.block_share, help="share of --minutes spent in the block stage when both run")
    g.add_argument("--block-windows", type=int, default=d.block_windows)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--hidden-loss", type=float, default=d.hidden_loss, help="weight of a per-layer hidden-state loss beside the KL")
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--stop-at-step", type=int, default=0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-bf16", action="store_true", help="run the teacher and the student's output layer in float32 while training (slower)")
    g.add_argument("--device", default=None, help="torch device (default: cuda when torch sees one, else cpu)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoints, init folder and summary (default: <out>-checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--gguf", default=None, help="also write GGUF TQ2_0 (t2 only), which llama.cpp runs")
    return p


def _say(text: str) -> None:
    print(f"distill: {text}", file=sys.stderr, flush=True)


def _pick_init(args, src: Source, checkpoint_dir: Path, say) -> tuple[Init, str]:
    init = args.init
    if init is not None and Path(init).is_dir():
        if args.group_size is not None or args.scale is not None or args.keep:
            raise InvalidArgumentError("--group-size, --scale and --keep belong to the init method; a folder already has its own")
        loaded = read_init(Path(init), src)
        formats = {layer.fmt for layer in loaded.layers.values() if layer.kind == "q"}
        if args.format and formats and formats != {args.format}:
            raise InvalidArgumentError(f"--init {init} holds {', '.join(sorted(formats))} codes, not --format {args.format}")
        return loaded, (formats.pop() if formats else args.format or "t2")
    fmt = args.format or (FORMAT_OF.get(init) if init else None) or "t2"
    init = init or ("absmean" if fmt == "t2" else "arb")
    if init not in INITS[fmt]:
        raise InvalidArgumentError(f"--init '{init}' is neither a folder nor a {fmt} method ({', '.join(INITS[fmt])})")
    folder = checkpoint_dir / f"init-{init}"
    if not folder.exists():
        calib = args.calib or args.text[0]
        say(f"initializing with binllm quantize --method {init} into {folder}")
        quantize_model(src.path, folder, init, group_size=args.group_size, calib=calib if init in ("gptq-ternary", "arb") else None,
                       calib_tokens=args.calib_tokens, keep=args.keep, scale=args.scale, progress=lambda m: say(f"init: {m}") if m.startswith("done") else None)
    return read_init(folder, src), fmt


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    stages = tuple(s.strip() for s in args.stage.split(",") if s.strip())
    if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
        raise InvalidArgumentError(f"--stage takes blocks, model or blocks,model; got '{args.stage}'")
    if stages != tuple(s for s in STAGES if s in stages):
        raise InvalidArgumentError("--stage runs blocks before model")
    for name in ("ctx", "batch_size", "block_windows", "eval_tokens"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be at least 1")
    if args.minutes is not None and not args.minutes > 0:
        raise InvalidArgumentError("--minutes must be positive")
    if args.tokens is not None and args.tokens < 1:
        raise InvalidArgumentError("--tokens must be at least 1")
    out = Path(args.out)
    if not args.resume:
        refuse_existing_folder(out, "binllm distill")
    gguf = Path(args.gguf) if args.gguf else None
    if gguf is not None and gguf.exists():
        raise FileError(f"{gguf} already exists; binllm distill never overwrites")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny gradients and Adam moments as denormals slow every op
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + "-checkpoints")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    src = read_source(args.teacher)
    cfg = model_config(src)
    keep_blocks, keep_embed, keep_output = parse_keep(args.keep, cfg.num_hidden_layers)
    init, fmt = _pick_init(args, src, checkpoint_dir, _say)
    if gguf is not None and fmt != "t2":
        raise InvalidArgumentError("--gguf writes TQ2_0: it needs --format t2")
    keep_embed = keep_embed or "embed" in init.keep
    keep_output = keep_output or "output" in init.keep
    torch.manual_seed(args.seed)
    teacher = teacher_model(src, cfg)
    student = student_model(teacher, src, init, keep_embed, keep_output)

    from binllm.train.data import read_texts, windows

    tokenizer_json = src.files["tokenizer.json"]
    if args.heldout:
        train_texts, held_texts = read_texts(args.text, 0.0)[0], read_texts(args.heldout, 0.0)[0]
    else:
        train_texts, held_texts = read_texts(args.text, args.heldout_fraction)
    train_tokens, held_tokens = tokenize(tokenizer_json, train_texts), tokenize(tokenizer_json, held_texts)

    heldout = windows(held_tokens[: args.eval_tokens + 1], args.ctx)
    if not len(heldout):
        raise InvalidArgumentError(f"the held-out text gives {len(held_tokens)} tokens, fewer than one window of --ctx {args.ctx} + 1")
    dcfg = DistillConfig(
        stages=stages, minutes=args.minutes or 0.0, tokens=args.tokens or 0, block_share=args.block_share, block_steps=args.block_steps,
        block_windows=args.block_windows, block_lr=args.block_lr, ctx=args.ctx, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        temperature=args.temperature, hidden_loss=args.hidden_loss, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, seed=args.seed, stop_at_step=args.stop_at_step, bf16=not args.no_bf16,
    )
    _say(f"teacher {src.path.name}: {cfg.num_hidden_layers} blocks, hidden {cfg.hidden_size}; student {fmt} from {init.label}; "
         f"{len(train_tokens)} training tokens, {heldout[:, 1:].numel()} held-out; device {device}, {torch.get_num_threads()} threads")
    d = Distiller(teacher, student, train_tokens, heldout, dcfg, checkpoint_dir, device, _say)
    resumed = args.resume and d.resume()
    if resumed:
        _say(f"resumed: {d.blocks_done} blocks done, model stage at step {d.step}")
    teacher_nll = evaluate(d.teacher, d.heldout)
    _say(f"teacher: held-out perplexity {math.exp(teacher_nll):.2f}")
    if not resumed:
        d.history.append({"stage": "init", "heldout_nll": round(d._eval(f"init ({init.label})"), 4)})
    stopped_early = False
    if "blocks" in stages:
        d.run_blocks()
    if "model" in stages:
        stopped_early = d.run_model()
    d.save()
    final_nll = evaluate(d.student, d.heldout)
    info = {
        "teacher": src.path.name, "format": fmt, "init": init.label, "stages": list(stages), "tokens": d.tokens_seen, "steps": d.step,
        "train_seconds": round(d.seconds, 1), "stopped_early": bool(stopped_early),
    }
    summary = {
        **info, "teacher_heldout_perplexity": math.exp(teacher_nll), "heldout_perplexity": math.exp(final_nll),
        "perplexity_ratio": math.exp(final_nll - teacher_nll), "heldout_tokens": int(heldout[:, 1:].numel()), "ctx": args.ctx,
        "wall_seconds": round(time.time() - started, 1), "threads": torch.get_num_threads(), "device": str(device), "history": d.history,
    }
    _say(f"held-out perplexity {summary['heldout_perplexity']:.2f} = {summary['perplexity_ratio']:.2f}x the teacher's {summary['teacher_heldout_perplexity']:.2f}")
    if stopped_early and args.stop_at_step:
        _say("stopped at --stop-at-step: nothing exported (resume with --resume)")
    else:
        kept = keep_blocks | {int(x) for x in init.keep if x.isdigit()}
        summary.update(export(d.student.cpu(), src, out, info, kept, keep_embed, keep_output, gguf, _say))
        _say(f"exported {out}")
    (checkpoint_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
