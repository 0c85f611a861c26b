"""A small BitNet b1.58 language model in PyTorch, shaped like the checkpoints binllm runs.

It is `BitNetForCausalLM` as binllm's forward pass reads it (rust/binllm-core/src/model/mod.rs):

    x = embed(tokens)
    per layer:  h = rmsnorm(x); q, k, v = BitLinear(h); NeoX RoPE on q, k; causal GQA attention
                x = x + o_proj(attn_sub_norm(attention))
                h = rmsnorm(x); g = relu(gate(h))^2 * up(h)
                x = x + down_proj(ffn_sub_norm(g))
    logits = rmsnorm(x) @ embed^T                       (tied, float)

RMSNorms run in float32 with eps 1e-5. With `ternary=False` every BitLinear is a plain
`nn.Linear`: the float twin used to measure what ternarization costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from binllm._core import InvalidArgumentError
from binllm.train.bitlinear import BitLinear


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    ternary: bool = True
    # "relu2" (BitNet b1.58 2B4T) or "silu" (Llama; what llama.cpp's bitnet graph computes).
    hidden_act: str = "relu2"
    # BitNet's RMSNorms before o_proj and down_proj; False for Llama (a distillation teacher).
    sub_norms: bool = True
    # The output layer is the embedding (True) or its own `lm_head`.
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, linear):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = linear(cfg.hidden_size, self.heads * self.head_dim)
        self.k_proj = linear(cfg.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = linear(cfg.hidden_size, self.kv_heads * self.head_dim)
        self.attn_sub_norm = RMSNorm(self.heads * self.head_dim, cfg.rms_norm_eps) if cfg.sub_norms else nn.Identity()
        self.o_proj = linear(self.heads * self.head_dim, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        a = a.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.o_proj(self.attn_sub_norm(a))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, linear):
        super().__init__()
        self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_sub_norm = RMSNorm(cfg.intermediate_size, cfg.rms_norm_eps) if cfg.sub_norms else nn.Identity()
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size)
        if cfg.hidden_act not in ("relu2", "silu"):
            raise InvalidArgumentError(f"hidden_act must be 'relu2' or 'silu', got {cfg.hidden_act!r}")
        self.hidden_act = cfg.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        g = (F.silu(gate) if self.hidden_act == "silu" else F.relu(gate).square()) * self.up_proj(x)
        return self.down_proj(self.ffn_sub_norm(g))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, linear):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, linear)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, linear)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class BitNetLM(nn.Module):
    """Parameter names match the Hugging Face checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...)."""

    def __init__(self, cfg: ModelConfig, linear=None):
        """`linear(in, out)` builds each decoder linear (default: BitLinear, or nn.Linear for
        the float twin)."""
        super().__init__()
        self.config = cfg
        if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
            raise InvalidArgumentError("hidden size must split into heads, and heads into KV groups")
        if linear is None:
            linear = BitLinear if cfg.ternary else (lambda i, o: nn.Linear(i, o, bias=False))
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg, linear) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        half = cfg.head_dim // 2
        # float32 throughout, as binllm computes it.
        exponents = torch.arange(half, dtype=torch.float32) * 2 / cfg.head_dim
        inv_freq = 1.0 / torch.tensor(cfg.rope_theta, dtype=torch.float32) ** exponents
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def rope(self, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in float32 as binllm computes them: pos * inv_freq, then cos/sin.
        angles = torch.arange(t, device=device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch x time) -> logits (batch x time x vocab)."""
        x = self.model.embed_tokens(tokens)
        cos, sin = self.rope(tokens.shape[1], tokens.device)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer on the last block's output."""
        head = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return F.linear(self.model.norm(x), head)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of windows (batch x (time + 1))."""
        logits = self.forward(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))

    def count_parameters(self) -> dict[str, int]:
        linear = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        total = sum(p.numel() for p in self.parameters())
        return {"linear": linear, "embedding": self.model.embed_tokens.weight.numel(), "total": total}
