"""BitNet b1.58 linear layer for quantization-aware training.

The layer keeps latent float weights and, on every forward, multiplies absmean-ternarized
weights with per-token int8-quantized activations, exactly the arithmetic binllm's packed
kernels do at inference:

    Wq = clamp(round(W / mean|W|), -1, 1) * mean|W|          (mean clamped at 1e-5)
    xq = clamp(round_half_even(x * s), -128, 127) / s,  s = 127 / max|x| per token (clamp 1e-5)
    y  = xq @ Wq^T

Gradients pass through both roundings unchanged (straight-through estimator), so the latent
weights and the layers below keep learning. `torch.round` rounds half to even, like the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ternary_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1}, mean|W|) of a weight matrix, per tensor."""
    mean = weight.abs().mean().clamp(min=1e-5)
    return (weight / mean).round().clamp(-1, 1), mean


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Absmean ternary weights scaled back to float, with a straight-through gradient."""
    codes, mean = ternary_codes(weight)
    return weight + (codes * mean - weight).detach()


def activation_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last axis) int8 codes of activations (as float values) and their scales."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127), scale


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last axis) int8 activations scaled back to float, with a straight-through gradient."""
    codes, scale = activation_codes(x)
    return x + (codes / scale - x).detach()


class BitLinear(nn.Linear):
    """`nn.Linear` without bias whose forward runs BitNet b1.58 ternary x int8 arithmetic."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_activation(x), quantize_weight(self.weight))
