"""Decoder-style Transformer (RMSNorm, RoPE, SwiGLU) in Flax Linen with logical-axis annotations.

The model receives token ids, position ids and an attention-mask kind and returns logits; it never
knows which objective calls it. Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`,
`vocab`); `jaxorder.platform.sharding` alone maps them to mesh axes. Projections, the SwiGLU gate and the
attention scores go through `cpu_rewrites.ops(cfg)`: the plain math, or (`model.backward_rewrites:
cpu`, the default on CPU) the same math with backward passes rewritten for XLA:CPU.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import ModelConfig
from jaxorder.model import cpu_rewrites
from jaxorder.model.attention import (
    CACHE_NAMES,
    attention_mask,
    cached_attention,
    pallas_attention,
    resolve_model_config,
    xla_attention,
)
from jaxorder.model.rope import apply_rope

Params = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def jnp_dtype(name: str) -> Any:
    """The jnp dtype of a config dtype name (model.dtype, model.param_dtype)."""
    return DTYPES[name]


def _init(std: float, axes: tuple) -> Any:
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class RMSNorm(nn.Module):
    cfg: ModelConfig
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray) -> jnp.ndarray:
        scale_d = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                             (x_BLd.shape[-1],), jnp_dtype(self.cfg.param_dtype))
        x32 = x_BLd.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale_d.astype(jnp.float32)).astype(x_BLd.dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray, positions_BL: jnp.ndarray, mask_kind: str,
                 key_valid_BL: jnp.ndarray | None = None,
                 query_positions_BL: jnp.ndarray | None = None) -> jnp.ndarray:
        """Keys are rotated at `positions_BL`, queries at `query_positions_BL` (default: the same)."""
        cfg = self.cfg
        q_pos_BL = positions_BL if query_positions_BL is None else query_positions_BL
        dt, pdt = jnp_dtype(cfg.dtype), jnp_dtype(cfg.param_dtype)
        d, H, D = cfg.d_model, cfg.n_heads, cfg.head_dim
        w_qkv = self.param("qkv", _init(d ** -0.5, ("embed", None, "heads", "kv")), (d, 3, H, D), pdt)
        w_out = self.param("out", _init((H * D) ** -0.5 / (2 * cfg.n_layers) ** 0.5,
                                        ("heads", "kv", "embed")), (H, D, d), pdt)
        B, L = x_BLd.shape[:2]
        ops = cpu_rewrites.ops(cfg)
        w_qkv = w_qkv.astype(dt)
        if self.has_variable("cache", "cached_key"):
            # Incremental decoding (no backward pass): one projection by the whole fused weight, since
            # XLA:CPU copies a weight slice on every call, a fixed cost when a call runs few positions.
            qkv_BL3HD = ops.dense(x_BLd, w_qkv.reshape(d, 3 * H * D)).reshape(B, L, 3, H, D)
            q_BLHD, k_BLHD, v_BLHD = (qkv_BL3HD[:, :, t] for t in range(3))
        else:
            # One projection per q/k/v from slices of the fused weight: slicing a fused [B, L, 3, H, D]
            # activation instead costs full-size pad + add buffers in the backward pass.
            q_BLHD, k_BLHD, v_BLHD = (ops.dense(x_BLd, w_qkv[:, t].reshape(d, H * D)).reshape(B, L, H, D)
                                      for t in range(3))
        # Analysis capture (jaxorder.experiments.analysis); a no-op unless "intermediates" is mutable in
        # apply.
        self.sow("intermediates", "q_pre_rope", q_BLHD)
        self.sow("intermediates", "k_pre_rope", k_BLHD)
        if self.has_variable("cache", "cached_key"):  # incremental decoding: jaxorder.model.decode
            cache = tuple(self.variable("cache", n, lambda: None) for n in CACHE_NAMES)
            o_BLHD = cached_attention(rotate(q_BLHD, q_pos_BL, cfg), rotate(k_BLHD, positions_BL, cfg),
                                      v_BLHD, *cache, new_mask=mask_kind)
            return ops.dense(o_BLHD.reshape(B, L, H * D), w_out.astype(dt).reshape(H * D, d))
        # the fused kernel has no per-row key mask: rows with padding keys take the XLA path
        if cfg.attention_impl == "pallas" and key_valid_BL is None:  # RoPE is applied inside the kernel
            # learned / none: position 0 everywhere is the identity rotation (cos 0 = 1, sin 0 = 0); the
            # kernel's masks use sequence indices, never position ids
            rope = cfg.positions == "rope"
            kernel_pos_BL = positions_BL if rope else jnp.zeros_like(positions_BL)
            kernel_q_pos_BL = q_pos_BL if rope else jnp.zeros_like(q_pos_BL)
            o_BLHD = pallas_attention(q_BLHD, k_BLHD, v_BLHD, kernel_pos_BL, mask_kind, cfg.rope_base,
                                      interpret=True if cfg.pallas_interpret else None,
                                      query_positions_BL=kernel_q_pos_BL)
        # dead code for pallas unless captured
        q_BLHD = rotate(q_BLHD, q_pos_BL, cfg)
        k_BLHD = rotate(k_BLHD, positions_BL, cfg)
        self.sow("intermediates", "q_post_rope", q_BLHD)
        self.sow("intermediates", "k_post_rope", k_BLHD)
        if cfg.attention_impl == "xla" or key_valid_BL is not None:
            mask_LL = attention_mask(mask_kind, x_BLd.shape[1])
            if key_valid_BL is not None:  # [B, 1, L, L]: no query attends to a padding key
                mask_LL = mask_LL[None, None] & key_valid_BL[:, None, None, :]
            o_BLHD = xla_attention(q_BLHD, k_BLHD, v_BLHD, mask_LL, ops)
        return ops.dense(o_BLHD.reshape(B, L, H * D), w_out.astype(dt).reshape(H * D, d))


def rotate(x_BLHD: jnp.ndarray, positions_BL: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    """q or k rotated by RoPE when model.positions=rope; unchanged for learned (the position is in the
    input embedding) and none (no position signal)."""
    if cfg.positions != "rope":
        return x_BLHD
    return apply_rope(x_BLHD, positions_BL, cfg.rope_base, cfg.max_len)


class SwiGLU(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray) -> jnp.ndarray:
        cfg = self.cfg
        dt, pdt = jnp_dtype(cfg.dtype), jnp_dtype(cfg.param_dtype)
        d, F = cfg.d_model, cfg.ff_dim
        if self.has_variable("params", "gate"):
            # decode.decode_params split the fused weight once, outside a sampler's step loop: XLA:CPU
            # copies a weight slice on every call and does not hoist it out of a loop
            w_gate, w_up = (self.get_variable("params", n).astype(dt) for n in ("gate", "up"))
        else:
            # gate and up from slices of the fused weight (see Attention); unlike q/k/v, one projection
            # by the whole weight was slower in incremental decoding too (docs/performance.md)
            w_in = self.param("gate_up", _init(d ** -0.5, ("embed", None, "mlp")), (d, 2, F), pdt).astype(dt)
            w_gate, w_up = w_in[:, 0], w_in[:, 1]
        w_out = self.param("down", _init(F ** -0.5 / (2 * cfg.n_layers) ** 0.5, ("mlp", "embed")), (F, d),
                           pdt)
        ops = cpu_rewrites.ops(cfg)
        h_BLF = ops.swiglu(ops.dense(x_BLd, w_gate), ops.dense(x_BLd, w_up))
        h_BLF = nn.with_logical_constraint(h_BLF, ("batch", "length", "mlp"))
        return ops.dense(h_BLF, w_out.astype(dt))


def _modulate(h_BLd: jnp.ndarray, mod: tuple[jnp.ndarray, jnp.ndarray] | None) -> jnp.ndarray:
    if mod is None:
        return h_BLd
    return h_BLd * (1 + mod[0]) + mod[1]


class Block(nn.Module):
    """One pre-norm layer. `scanned=True` is the nn.scan body form: returns (x, None)."""
    cfg: ModelConfig
    scanned: bool = False

    @nn.compact
    def __call__(self, x_BLd: jnp.ndarray, positions_BL: jnp.ndarray, mask_kind: str,
                 key_valid_BL: jnp.ndarray | None = None, query_positions_BL: jnp.ndarray | None = None,
                 cond_BLd: jnp.ndarray | None = None):
        """`cond_BLd` (model.target_adaln): each norm's output h becomes h * (1 + scale) + shift with
        (scale, shift) a per-layer linear map of it, zero at init (adaLN-Zero)."""
        cfg = self.cfg
        mods = [None, None]
        if cond_BLd is not None:
            w_dMd = self.param("target_mod", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                          ("embed", None, None)),
                               (cfg.d_model, 4, cfg.d_model), jnp_dtype(cfg.param_dtype))
            mod_BLMd = jnp.einsum("bld,dme->blme", cond_BLd, w_dMd.astype(cond_BLd.dtype))
            mods = [(mod_BLMd[:, :, 0], mod_BLMd[:, :, 1]), (mod_BLMd[:, :, 2], mod_BLMd[:, :, 3])]
        h_BLd = _modulate(RMSNorm(cfg, name="attn_norm")(x_BLd), mods[0])
        x_BLd = x_BLd + Attention(cfg, name="attn")(h_BLd, positions_BL, mask_kind, key_valid_BL,
                                                   query_positions_BL)
        x_BLd = x_BLd + SwiGLU(cfg, name="mlp")(_modulate(RMSNorm(cfg, name="mlp_norm")(x_BLd), mods[1]))
        x_BLd = nn.with_logical_constraint(x_BLd, ("batch", "length", "embed"))
        return (x_BLd, None) if self.scanned else x_BLd


# model.remat -> what the backward pass may keep from the forward pass of a layer. The projections
# (no batch dims) count as dots, rewritten ones through their checkpoint name.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": cpu_rewrites.save_named_dots(jax.checkpoint_policies.dots_saveable),
    "dots_with_no_batch_dims_saveable": cpu_rewrites.save_named_dots(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
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

    model.positions says how `positions_BL` enter: RoPE on q and k (rope), a learned table `pos_embed`
    [max_len, d_model] added to the input embeddings (learned), or not at all (none).
    Optional `target_positions_BL` [B, L] int (any-order AR): the position each slot must predict,
    embedded by a learned table `target_embed` [max_len, d_model] added to the input embeddings.
    The table exists only in models initialized with target positions. With model.query_positions
    = target the queries are also rotated by RoPE at the target positions (keys stay at
    `positions_BL`); any other value (current, or an unsettled auto) rotates them at `positions_BL`.
    With model.target_adaln the target embedding also modulates every block's two norms (Block).

    Optional `key_valid_BL` [B, L] bool (insertion models, rows of different lengths): keys where it
    is False (padding) are attended by no query. `length_classes` C > 0 (insertion models): a second
    output head `length_head` [d_model, C] on the final hidden state; the call then returns
    (logits [B, L, V], length logits [B, L, C]). The head exists only in models initialized with it.
    """
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray, mask_kind: str = "causal",
                 target_positions_BL: jnp.ndarray | None = None, key_valid_BL: jnp.ndarray | None = None,
                 length_classes: int = 0) -> Any:
        cfg = resolve_model_config(self.cfg)  # a no-op for a run's config, settled at its start
        dt, pdt = jnp_dtype(cfg.dtype), jnp_dtype(cfg.param_dtype)
        ops = cpu_rewrites.ops(cfg)
        embed_Vd = self.param("embed", _init(1.0, ("vocab", "embed")), (cfg.vocab_size, cfg.d_model), pdt)
        x_BLd = jnp.take(embed_Vd, tokens_BL, axis=0).astype(dt)
        if cfg.positions == "learned":  # absolute positions, looked up by position id (permuted for ao_ar)
            pos_Pd = self.param("pos_embed", _init(1.0, (None, "embed")), (cfg.max_len, cfg.d_model), pdt)
            x_BLd = x_BLd + jnp.take(pos_Pd, positions_BL, axis=0).astype(dt)
        if target_positions_BL is not None:
            target_Pd = self.param("target_embed", _init(cfg.target_embed_std, (None, "embed")),
                                   (cfg.max_len, cfg.d_model), pdt)
            target_BLd = jnp.take(target_Pd, target_positions_BL, axis=0).astype(dt)
            x_BLd = x_BLd + target_BLd
        cond_BLd = target_BLd if cfg.target_adaln and target_positions_BL is not None else None
        x_BLd = nn.with_logical_constraint(x_BLd, ("batch", "length", "embed"))
        # without target positions there is only one position per slot to rotate its query by
        target_q = cfg.query_positions == "target" and target_positions_BL is not None
        q_pos_BL = target_positions_BL if target_q else positions_BL
        if cfg.scan_layers:  # one layer body; params and sown intermediates get a leading layer axis
            layers = nn.scan(block_class(cfg, scanned=True), variable_axes={"params": 0, "intermediates": 0},
                             split_rngs={"params": True},
                             in_axes=(nn.broadcast,) * 5,
                             length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: SCAN_AXIS})
            x_BLd, _ = layers(cfg, scanned=True, name="layers")(x_BLd, positions_BL, mask_kind, key_valid_BL,
                                                                q_pos_BL, cond_BLd)
        else:
            for i in range(cfg.n_layers):
                x_BLd = block_class(cfg)(cfg, name=f"layer_{i}")(x_BLd, positions_BL, mask_kind, key_valid_BL,
                                                                 q_pos_BL, cond_BLd)
        x_BLd = RMSNorm(cfg, name="final_norm")(x_BLd)
        head_dV = self.param("head", _init(cfg.d_model ** -0.5, ("embed", "vocab")),
                             (cfg.d_model, cfg.vocab_size), pdt)
        logits_BLV = ops.dense(x_BLd, head_dV.astype(dt)).astype(jnp.float32)
        if not length_classes:
            return logits_BLV
        length_dC = self.param("length_head", _init(cfg.d_model ** -0.5, ("embed", None)),
                               (cfg.d_model, length_classes), pdt)
        return logits_BLV, ops.dense(x_BLd, length_dC.astype(dt)).astype(jnp.float32)


def init_boxed_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8,
                      target_positions: bool = False, length_classes: int = 0) -> Params:
    """Parameters still boxed with their logical axis names (for deriving shardings).

    target_positions=True adds the target-position embedding (objectives declaring target_positions),
    length_classes > 0 the length head (`Objective.length_classes`).
    Always float32 (master weights): model.param_dtype is the dtype `apply` casts them to."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    targets = jnp.zeros_like(tokens) if target_positions else None
    master = dataclasses.replace(cfg, param_dtype="float32")
    return Transformer(master).init(rng, tokens, jnp.zeros_like(tokens), "causal", targets,
                                    length_classes=length_classes)["params"]


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8, target_positions: bool = False,
                length_classes: int = 0) -> Params:
    """Plain (unboxed) parameter pytree."""
    return nn.meta.unbox(init_boxed_params(cfg, rng, seq_len, target_positions, length_classes))


def logical_axes(cfg: ModelConfig, target_positions: bool = False, length_classes: int = 0) -> Params:
    """Pytree of PartitionSpecs (of logical axis names) matching init_params."""
    return nn.get_partition_spec(jax.eval_shape(
        lambda: init_boxed_params(cfg, jax.random.key(0), target_positions=target_positions,
                                  length_classes=length_classes)))


def apply(params: Params, cfg: ModelConfig, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray,
          mask_kind: str, target_positions_BL: jnp.ndarray | None = None) -> jnp.ndarray:
    if target_positions_BL is not None and "target_embed" not in params:
        raise ValueError("target positions need a model initialized with them "
                         "(init_params(..., target_positions=True); objectives ao_ar and latent_order)")
    check_positions(cfg, positions_BL, target_positions_BL)
    return Transformer(cfg).apply({"params": cast_params(params, cfg)}, tokens_BL, positions_BL, mask_kind,
                                  target_positions_BL)


def final_norm_only(module: nn.Module, method: str) -> bool:
    """capture_intermediates filter: the output of the final RMSNorm (the hidden state the head reads)."""
    return module.name == "final_norm" and method == "__call__"


def apply_with_hidden(params: Params, cfg: ModelConfig, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray,
                      mask_kind: str, target_positions_BL: jnp.ndarray | None = None,
                      ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`apply` and the final hidden state [B, L, d_model] (after final_norm) that the head reads, for an
    objective's own output heads; unused outputs (the logits, if only the state is read) cost nothing
    under jit."""
    if target_positions_BL is not None and "target_embed" not in params:
        raise ValueError("target positions need a model initialized with them (init_params(..., "
                         "target_positions=True))")
    check_positions(cfg, positions_BL, target_positions_BL)
    logits_BLV, state = Transformer(cfg).apply({"params": cast_params(params, cfg)}, tokens_BL, positions_BL,
                                               mask_kind, target_positions_BL,
                                               capture_intermediates=final_norm_only,
                                               mutable=["intermediates"])
    return logits_BLV, state["intermediates"]["final_norm"]["__call__"][0]


def apply_insertion(params: Params, cfg: ModelConfig, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray,
                    key_valid_BL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Bidirectional pass over rows padded on the right (`key_valid_BL` False at padding) with the
    length head: (token logits [B, L, V], length logits [B, L, C]), C = the head's width."""
    if "length_head" not in params:
        raise ValueError("the length head needs a model initialized with it "
                         "(init_params(..., length_classes=C); objective ilm)")
    check_positions(cfg, positions_BL)
    return Transformer(cfg).apply({"params": cast_params(params, cfg)}, tokens_BL, positions_BL,
                                  "bidirectional", None, key_valid_BL, params["length_head"].shape[1])


def check_positions(cfg: ModelConfig, *positions: jnp.ndarray | None) -> None:
    """ValueError for a concrete position outside [0, model.max_len): the RoPE and target-position
    tables have no row for it, and the lookup would give NaN. Traced positions (inside jit) are
    not checked here: every entry point that builds them checks its lengths against max_len."""
    for pos in positions:
        if pos is None or not np.size(pos):
            continue
        try:
            lo, hi = int(np.min(pos)), int(np.max(pos))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            continue  # traced: checked where the lengths are known
        if lo < 0 or hi >= cfg.max_len:
            raise ValueError(f"positions {lo}..{hi} are outside [0, model.max_len={cfg.max_len}); raise "
                             f"model.max_len (RoPE needs no new parameters) or feed shorter sequences")


def cast_params(params: Params, cfg: ModelConfig) -> Params:
    """The float32 master weights in model.param_dtype for a forward pass (identity for float32).

    Under jax.grad the cast's transpose returns float32 gradients for the float32 master weights."""
    pdt = jnp_dtype(cfg.param_dtype)
    if pdt == jnp.float32:
        return params
    return jax.tree.map(lambda p: p.astype(pdt) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
