"""Decoder-style Transformer (RMSNorm, RoPE, SwiGLU) in Flax Linen with logical-axis annotations.

The model receives token ids, position ids and an attention-mask kind and returns logits; it never
knows which objective calls it. Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`,
`vocab`); `jaxorder.platform.sharding` alone maps them to mesh axes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxorder.config import ModelConfig
from jaxorder.model.attention import (CACHE_NAMES, attention_mask, cached_attention, pallas_attention,
                                      resolve_attention_impl, xla_attention)
from jaxorder.model.layout import keep_layout
from jaxorder.model.rope import apply_rope

Params = Any
DENSE_NAME = "dense"  # checkpoint name of every projection output (see REMAT_POLICIES)


def _dtype(name: str) -> Any:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def dense(x_BLi: jnp.ndarray, w_io: jnp.ndarray) -> jnp.ndarray:
    """x [B, L, i] @ w [i, o] -> [B, L, o], named DENSE_NAME for the remat policies.

    The dot sits inside a custom_vjp (`_dense_dot`), where jax.checkpoint's dots_* policies cannot
    see it; the name makes the projection outputs saveable under those policies."""
    return checkpoint_name(_dense_dot(x_BLi, w_io), DENSE_NAME)


@jax.custom_vjp
def _dense_dot(x_BLi: jnp.ndarray, w_io: jnp.ndarray) -> jnp.ndarray:
    """x [B, L, i] @ w [i, o] -> [B, L, o]; an einsum whose backward orders the weight gradient.

    Same math as the plain einsum. Its only purpose is the operand order of the weight-gradient
    dot: JAX's transpose rule emits dot(dy, x) followed by a transpose, and XLA:CPU then copies
    the larger activation (dy [B*L, o] when o > i) into a transposed buffer for the GEMM. Here the
    smaller activation comes first, so the transposed copy is of [B*L, min(i, o)]. Measured on
    the 2-core CPU: with the gate/up and q/k/v projections split (below), 0.86x the step time at
    shape a (4x128, T=64). Accelerators assign layouts themselves; the HLO is the same dots.
    """
    return jnp.einsum("bli,io->blo", x_BLi, w_io)


def _dense_fwd(x_BLi, w_io):
    return _dense_dot(x_BLi, w_io), (x_BLi, w_io)


def _dense_bwd(res, dy_BLo):
    x_BLi, w_io = res
    dx_BLi = jnp.einsum("blo,io->bli", dy_BLo, w_io)
    if x_BLi.shape[-1] <= dy_BLo.shape[-1]:
        dw_io = jnp.einsum("bli,blo->io", x_BLi, dy_BLo)
    else:
        dw_io = keep_layout(jnp.einsum("blo,bli->oi", dy_BLo, x_BLi)).T  # the dot stays plain (layout.py)
    return dx_BLi, dw_io.astype(w_io.dtype)


_dense_dot.defvjp(_dense_fwd, _dense_bwd)


def _init(std: float, axes: tuple) -> Any:
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class RMSNorm(nn.Module):
    cfg: ModelConfig
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray) -> jnp.ndarray:
        scale_d = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                             (x_BLd.shape[-1],), _dtype(self.cfg.param_dtype))
        x32 = x_BLd.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale_d.astype(jnp.float32)).astype(x_BLd.dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray, positions_BL: jnp.ndarray, mask_kind: str) -> jnp.ndarray:
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        d, H, D = cfg.d_model, cfg.n_heads, cfg.head_dim
        w_qkv = self.param("qkv", _init(d ** -0.5, ("embed", None, "heads", "kv")), (d, 3, H, D), pdt)
        w_out = self.param("out", _init((H * D) ** -0.5 / (2 * cfg.n_layers) ** 0.5, ("heads", "kv", "embed")),
                           (H, D, d), pdt)
        B, L = x_BLd.shape[:2]
        # One projection per q/k/v from slices of the fused weight: slicing a fused [B, L, 3, H, D]
        # activation instead costs full-size pad + add buffers in the backward pass.
        w_qkv = w_qkv.astype(dt)
        q_BLHD, k_BLHD, v_BLHD = (dense(x_BLd, w_qkv[:, t].reshape(d, H * D)).reshape(B, L, H, D)
                                  for t in range(3))
        # Analysis capture (jaxorder.experiments.analysis); a no-op unless "intermediates" is mutable in apply.
        self.sow("intermediates", "q_pre_rope", q_BLHD)
        self.sow("intermediates", "k_pre_rope", k_BLHD)
        if self.has_variable("cache", "cached_key"):  # incremental decoding: jaxorder.model.decode
            cache = tuple(self.variable("cache", n, lambda: None) for n in CACHE_NAMES)
            o_BLHD = cached_attention(apply_rope(q_BLHD, positions_BL, cfg.rope_base, cfg.max_len),
                                      apply_rope(k_BLHD, positions_BL, cfg.rope_base, cfg.max_len), v_BLHD, *cache,
                                      new_mask=mask_kind)
            return dense(o_BLHD.reshape(B, L, H * D), w_out.astype(dt).reshape(H * D, d))
        if resolve_attention_impl(cfg.attention_impl) == "pallas":  # RoPE is applied inside the fused kernel
            o_BLHD = pallas_attention(q_BLHD, k_BLHD, v_BLHD, positions_BL, mask_kind, cfg.rope_base,
                                      interpret=True if cfg.pallas_interpret else None)
        q_BLHD = apply_rope(q_BLHD, positions_BL, cfg.rope_base, cfg.max_len)  # dead code for pallas unless captured
        k_BLHD = apply_rope(k_BLHD, positions_BL, cfg.rope_base, cfg.max_len)
        self.sow("intermediates", "q_post_rope", q_BLHD)
        self.sow("intermediates", "k_post_rope", k_BLHD)
        if resolve_attention_impl(cfg.attention_impl) == "xla":
            mask_LL = attention_mask(mask_kind, x_BLd.shape[1])
            o_BLHD = xla_attention(q_BLHD, k_BLHD, v_BLHD, mask_LL)
        return dense(o_BLHD.reshape(B, L, H * D), w_out.astype(dt).reshape(H * D, d))


@jax.custom_vjp
def swiglu(gate_BLF: jnp.ndarray, up_BLF: jnp.ndarray) -> jnp.ndarray:
    """silu(gate) * up, with a backward pass that keeps only gate and up.

    Autodiff of nn.silu(gate) * up saves sigmoid(gate) and silu(gate) as well, each a separate
    elementwise pass over [B, L, F] in the forward pass. Here the backward asks for the sigmoid
    again; in the compiled CPU step XLA shares that one sigmoid pass between the forward and the
    backward fusions, and silu(gate) is never stored. Same math; float rounding may differ in the
    last bit."""
    return gate_BLF * jax.nn.sigmoid(gate_BLF) * up_BLF


def _swiglu_fwd(gate_BLF, up_BLF):
    return swiglu(gate_BLF, up_BLF), (gate_BLF, up_BLF)


def _swiglu_bwd(res, dh_BLF):
    gate_BLF, up_BLF = res
    sig_BLF = jax.nn.sigmoid(gate_BLF)
    d_gate_BLF = dh_BLF * up_BLF * sig_BLF * (1 + gate_BLF * (1 - sig_BLF))
    return d_gate_BLF, dh_BLF * gate_BLF * sig_BLF


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class SwiGLU(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray) -> jnp.ndarray:
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        d, F = cfg.d_model, cfg.ff_dim
        w_in = self.param("gate_up", _init(d ** -0.5, ("embed", None, "mlp")), (d, 2, F), pdt)
        w_out = self.param("down", _init(F ** -0.5 / (2 * cfg.n_layers) ** 0.5, ("mlp", "embed")), (F, d), pdt)
        w_in = w_in.astype(dt)  # gate and up from slices of the fused weight (see Attention)
        h_BLF = swiglu(dense(x_BLd, w_in[:, 0]), dense(x_BLd, w_in[:, 1]))
        h_BLF = nn.with_logical_constraint(h_BLF, ("batch", "length", "mlp"))
        return dense(h_BLF, w_out.astype(dt))


class Block(nn.Module):
    """One pre-norm layer. `scanned=True` is the nn.scan body form: returns (x, None)."""
    cfg: ModelConfig
    scanned: bool = False

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray, positions_BL: jnp.ndarray, mask_kind: str):
        x_BLd = x_BLd + Attention(self.cfg, name="attn")(RMSNorm(self.cfg, name="attn_norm")(x_BLd),
                                                        positions_BL, mask_kind)
        x_BLd = x_BLd + SwiGLU(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BLd))
        x_BLd = nn.with_logical_constraint(x_BLd, ("batch", "length", "embed"))
        return (x_BLd, None) if self.scanned else x_BLd


_SAVE_DENSE = jax.checkpoint_policies.save_only_these_names(DENSE_NAME)
# model.remat -> what the backward pass may keep from the forward pass of a layer. The projections
# (`dense`, no batch dims) count as dots through their checkpoint name.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_saveable, _SAVE_DENSE),
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _SAVE_DENSE),
}
SCAN_AXIS = "layers"  # logical name of the leading layer axis of scanned parameters (unmapped: replicated)


def block_class(cfg: ModelConfig, scanned: bool = False):
    """Block, wrapped in nn.remat with the configured policy (mask_kind, argument 3, is static)."""
    if cfg.remat == "none":
        return Block
    # inside nn.scan the CSE-prevention barrier is unnecessary (and costs fusion), see jax.checkpoint
    return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], static_argnums=(3,), prevent_cse=not scanned)


def stack_layers(params: Params, n_layers: int) -> Params:
    """Unrolled params (layer_0..layer_{n-1}) -> scanned layout ("layers": leaves stacked on axis 0)."""
    params = dict(params)
    layers = [params.pop(f"layer_{i}") for i in range(n_layers)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params


def unstack_layers(params: Params, n_layers: int) -> Params:
    """Scanned params -> unrolled layout (layer_0..layer_{n-1})."""
    params = dict(params)
    layers = params.pop("layers")
    for i in range(n_layers):
        params[f"layer_{i}"] = jax.tree.map(lambda x: x[i], layers)
    return params


class Transformer(nn.Module):
    """tokens [B, L] int, positions [B, L] int, mask kind -> logits [B, L, vocab] (float32).

    Optional `target_positions_BL` [B, L] int (any-order AR): the position each slot must predict,
    embedded by a learned table `target_embed` [max_len, d_model] added to the input embeddings.
    The table exists only in models initialized with target positions.
    """
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray, mask_kind: str = "causal",
                 target_positions_BL: jnp.ndarray | None = None) -> jnp.ndarray:
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        embed_Vd = self.param("embed", _init(1.0, ("vocab", "embed")), (cfg.vocab_size, cfg.d_model), pdt)
        x_BLd = jnp.take(embed_Vd, tokens_BL, axis=0).astype(dt)
        if target_positions_BL is not None:
            target_Pd = self.param("target_embed", _init(1.0, (None, "embed")), (cfg.max_len, cfg.d_model), pdt)
            x_BLd = x_BLd + jnp.take(target_Pd, target_positions_BL, axis=0).astype(dt)
        x_BLd = nn.with_logical_constraint(x_BLd, ("batch", "length", "embed"))
        if cfg.scan_layers:  # one layer body; params and sown intermediates get a leading layer axis
            layers = nn.scan(block_class(cfg, scanned=True), variable_axes={"params": 0, "intermediates": 0},
                             split_rngs={"params": True}, in_axes=(nn.broadcast, nn.broadcast),
                             length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: SCAN_AXIS})
            x_BLd, _ = layers(cfg, scanned=True, name="layers")(x_BLd, positions_BL, mask_kind)
        else:
            for i in range(cfg.n_layers):
                x_BLd = block_class(cfg)(cfg, name=f"layer_{i}")(x_BLd, positions_BL, mask_kind)
        x_BLd = RMSNorm(cfg, name="final_norm")(x_BLd)
        head_dV = self.param("head", _init(cfg.d_model ** -0.5, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), pdt)
        return dense(x_BLd, head_dV.astype(dt)).astype(jnp.float32)


def init_boxed_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8, target_positions: bool = False) -> Params:
    """Parameters still boxed with their logical axis names (for deriving shardings).

    target_positions=True adds the target-position embedding (objectives with TARGET_POSITIONS).
    Always float32 (master weights): model.param_dtype is the dtype `apply` casts them to."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    targets = jnp.zeros_like(tokens) if target_positions else None
    master = dataclasses.replace(cfg, param_dtype="float32")
    return Transformer(master).init(rng, tokens, jnp.zeros_like(tokens), "causal", targets)["params"]


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8, target_positions: bool = False) -> Params:
    """Plain (unboxed) parameter pytree."""
    return nn.meta.unbox(init_boxed_params(cfg, rng, seq_len, target_positions))


def logical_axes(cfg: ModelConfig, target_positions: bool = False) -> Params:
    """Pytree of PartitionSpecs (of logical axis names) matching init_params."""
    return nn.get_partition_spec(jax.eval_shape(
        lambda: init_boxed_params(cfg, jax.random.key(0), target_positions=target_positions)))


def apply(params: Params, cfg: ModelConfig, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray,
          mask_kind: str, target_positions_BL: jnp.ndarray | None = None) -> jnp.ndarray:
    if target_positions_BL is not None and "target_embed" not in params:
        raise ValueError("target positions need a model initialized with them "
                         "(init_params(..., target_positions=True); objectives ao_ar and latent_order)")
    return Transformer(cfg).apply({"params": cast_params(params, cfg)}, tokens_BL, positions_BL, mask_kind,
                                  target_positions_BL)


def cast_params(params: Params, cfg: ModelConfig) -> Params:
    """The float32 master weights in model.param_dtype for a forward pass (identity for float32).

    Under jax.grad the cast's transpose returns float32 gradients for the float32 master weights."""
    pdt = _dtype(cfg.param_dtype)
    if pdt == jnp.float32:
        return params
    return jax.tree.map(lambda p: p.astype(pdt) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
