"""Hugging Face `trust_remote_code` module of an exported jaxorder model (copied into the export).

Self-contained (torch and transformers only, never jaxorder): the forward pass of
jaxorder.model.transformer for any mask kind, so order-agnostic runs (masked diffusion `mdm`,
block diffusion `bd3`, any-order AR `ao_ar`, `latent_order`) can be loaded with
`AutoModel.from_pretrained(DIR, trust_remote_code=True)`. The weights use Llama's tensor names;
the architecture is Llama's (RMSNorm, SwiGLU, half-split RoPE, untied head) with:
  - the attention mask chosen per call (`attention`): "bidirectional" (mdm; the default of mdm
    exports), "causal", or "bd3:<b>" (block diffusion's [x_t ; x] layout of length 2n);
  - positions given per call (`position_ids`), as any-order models read permuted windows;
  - `target_position_ids` (any-order models): the position each slot predicts, embedded by
    `model.target_embed` and added to the token embeddings; with `config.query_positions`
    "target" the queries are also rotated at them (keys at `position_ids`).
The MASK id is `config.mask_token_id`; masked-diffusion logits never predict it (callers apply
the SUBS rule: set its logit to -inf).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class JaxorderConfig(PretrainedConfig):
    model_type = "jaxorder"

    def __init__(self, vocab_size: int = 260, hidden_size: int = 128, intermediate_size: int = 384,
                 num_hidden_layers: int = 4, num_attention_heads: int = 4, max_position_embeddings: int = 512,
                 rope_theta: float = 10000.0, rms_norm_eps: float = 1e-6, objective: str = "mdm",
                 attention: str = "bidirectional", target_positions: bool = False,
                 mask_token_id: int | None = None, query_positions: str = "current", **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.objective = objective
        self.attention = attention
        self.target_positions = target_positions
        self.mask_token_id = mask_token_id
        self.query_positions = query_positions
        super().__init__(**kwargs)


def attention_mask(kind: str, length: int, device=None) -> torch.Tensor:
    """Boolean [L, L], True where query i may attend to key j (jaxorder.model.attention_mask)."""
    if kind == "causal":
        return torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if kind == "bidirectional":
        return torch.ones(length, length, dtype=torch.bool, device=device)
    if kind.startswith("bd3:"):
        b, n = int(kind[4:]), length // 2
        idx = torch.arange(length, device=device)
        clean, block = idx >= n, (idx % n) // b
        qc, kc, qb, kb = clean[:, None], clean[None, :], block[:, None], block[None, :]
        return ((~qc & ~kc & (qb == kb)) | (~qc & kc & (kb < qb)) | (qc & kc & (kb <= qb)))
    raise ValueError(f"unknown attention kind {kind!r}: causal, bidirectional or bd3:<b>")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def rope(x_BLHD: torch.Tensor, positions_BL: torch.Tensor, base: float) -> torch.Tensor:
    """Half-split rotary embedding, angles in float32 (jaxorder.model.rope)."""
    D = x_BLHD.shape[-1]
    inv_freq = base ** (-torch.arange(D // 2, dtype=torch.float32, device=x_BLHD.device) * 2.0 / D)
    angle = positions_BL.float()[..., None] * inv_freq  # [B, L, D/2]
    cos, sin = angle.cos()[:, :, None, :], angle.sin()[:, :, None, :]
    x1, x2 = x_BLHD.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BLHD.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: JaxorderConfig):
        super().__init__()
        d, self.H = cfg.hidden_size, cfg.num_attention_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.base = cfg.rope_theta

    def forward(self, x: torch.Tensor, positions_BL: torch.Tensor, mask_LL: torch.Tensor,
                query_positions_BL: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        split = lambda t: t.view(B, L, self.H, d // self.H)  # noqa: E731
        q = rope(split(self.q_proj(x)), query_positions_BL, self.base)
        k = rope(split(self.k_proj(x)), positions_BL, self.base)
        v = split(self.v_proj(x))
        scores = torch.einsum("blhd,bshd->bhls", q, k).float() * (d // self.H) ** -0.5
        scores = scores.masked_fill(~mask_LL, torch.finfo(torch.float32).min)
        probs = scores.softmax(dim=-1).to(v.dtype)
        return self.o_proj(torch.einsum("bhls,bshd->blhd", probs, v).reshape(B, L, d))


class MLP(nn.Module):
    def __init__(self, cfg: JaxorderConfig):
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: JaxorderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, positions_BL: torch.Tensor, mask_LL: torch.Tensor,
                query_positions_BL: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions_BL, mask_LL, query_positions_BL)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: JaxorderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.target_positions:
            self.target_embed = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class JaxorderModel(PreTrainedModel):
    config_class = JaxorderConfig
    base_model_prefix = "model"

    def __init__(self, config: JaxorderConfig):
        super().__init__(config)
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                target_position_ids: torch.Tensor | None = None, attention: str | None = None,
                **kwargs) -> MaskedLMOutput:
        """Logits [B, L, V] (float32). position_ids default to 0..L-1; `attention` to config.attention."""
        B, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.model.embed_tokens(input_ids)
        if target_position_ids is not None:
            if not self.config.target_positions:
                raise ValueError("this model has no target-position embedding (not an any-order run)")
            x = x + self.model.target_embed(target_position_ids)
        mask_LL = attention_mask(attention or self.config.attention, L, input_ids.device)
        # exports written before config.query_positions existed are current-mode models
        target_q = (getattr(self.config, "query_positions", "current") == "target"
                    and target_position_ids is not None)
        query_position_ids = target_position_ids if target_q else position_ids
        for layer in self.model.layers:
            x = layer(x, position_ids, mask_LL, query_position_ids)
        return MaskedLMOutput(logits=self.lm_head(self.model.norm(x)).float())
