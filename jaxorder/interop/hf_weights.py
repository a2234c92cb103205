"""The one name and layout mapping between jaxorder parameters and Hugging Face Llama tensors.

jaxorder's Transformer is Llama's architecture exactly: pre-norm RMSNorm (eps 1e-6, in float32,
scale only), no biases, SwiGLU MLP (down(silu(gate(x)) * up(x))), attention scaled by 1/sqrt(D)
with as many key/value heads as query heads, untied input embedding and output head, no
embedding scaling, and RoPE in the half-split layout ([x1 cos - x2 sin, x2 cos + x1 sin] over
the two halves of a head), which is Llama's `rotate_half`: so q/k need no permutation (the
permutation in HF's Meta-checkpoint converter undoes Meta's *interleaved* layout, which jaxorder
does not use). The only jaxorder tensor Llama lacks is the any-order models' `target_embed`;
it is exported as `model.target_embed.weight` (read only by the remote-code module).

torch Linear weights are [out, in]; jaxorder's fused kernels are [in, ...]: each tensor below is
a reshape and a transpose, exact in float32 both ways.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxorder.config import ConfigError, ModelConfig

Params = Any
TARGET_EMBED = "model.target_embed.weight"


def _layers(params: Params, n_layers: int) -> list[dict]:
    """Per-layer parameter dicts, from the unrolled (layer_i) or the scanned (layers) layout."""
    if "layers" in params:  # model.scan_layers: leaves stacked on axis 0
        return [{k: {n: np.asarray(v)[i] for n, v in sub.items()} for k, sub in params["layers"].items()}
                for i in range(n_layers)]
    return [params[f"layer_{i}"] for i in range(n_layers)]


def to_hf_state(params: Params, mcfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array ([out, in] for linear layers), in a fixed order."""
    d, H, D = mcfg.d_model, mcfg.n_heads, mcfg.head_dim
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
    state = {"model.embed_tokens.weight": f32(params["embed"])}
    if "target_embed" in params:
        state[TARGET_EMBED] = f32(params["target_embed"])
    for i, layer in enumerate(_layers(params, mcfg.n_layers)):
        p = f"model.layers.{i}."
        qkv_d3HD = np.asarray(layer["attn"]["qkv"], np.float32)
        for t, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[p + f"self_attn.{name}.weight"] = f32(qkv_d3HD[:, t].reshape(d, H * D).T)
        state[p + "self_attn.o_proj.weight"] = f32(np.asarray(layer["attn"]["out"]).reshape(H * D, d).T)
        gate_up_d2F = np.asarray(layer["mlp"]["gate_up"], np.float32)
        state[p + "mlp.gate_proj.weight"] = f32(gate_up_d2F[:, 0].T)
        state[p + "mlp.up_proj.weight"] = f32(gate_up_d2F[:, 1].T)
        state[p + "mlp.down_proj.weight"] = f32(np.asarray(layer["mlp"]["down"]).T)
        state[p + "input_layernorm.weight"] = f32(layer["attn_norm"]["scale"])
        state[p + "post_attention_layernorm.weight"] = f32(layer["mlp_norm"]["scale"])
    state["model.norm.weight"] = f32(params["final_norm"]["scale"])
    state["lm_head.weight"] = f32(np.asarray(params["head"]).T)
    return state


def expected_hf_shapes(mcfg: ModelConfig, target_positions: bool = False) -> dict[str, tuple[int, ...]]:
    """The HF tensor names and shapes a jaxorder model of `mcfg` maps to (to_hf_state's order)."""
    d, H, D, F, V = mcfg.d_model, mcfg.n_heads, mcfg.head_dim, mcfg.ff_dim, mcfg.vocab_size
    shapes = {"model.embed_tokens.weight": (V, d)}
    if target_positions:
        shapes[TARGET_EMBED] = (mcfg.max_len, d)
    for i in range(mcfg.n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (H * D, d), p + "self_attn.k_proj.weight": (H * D, d),
                       p + "self_attn.v_proj.weight": (H * D, d), p + "self_attn.o_proj.weight": (d, H * D),
                       p + "mlp.gate_proj.weight": (F, d), p + "mlp.up_proj.weight": (F, d),
                       p + "mlp.down_proj.weight": (d, F), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (V, d)
    return shapes


def check_shapes(state: dict[str, Any], mcfg: ModelConfig, target_positions: bool, source: str) -> None:
    """ConfigError naming the first tensor (in model order) that is missing or of another shape.

    `target_embed` may be missing (an AR checkpoint has none): the any-order model keeps its fresh
    initialization for it."""
    for name, shape in expected_hf_shapes(mcfg, target_positions).items():
        if name not in state:
            if name == TARGET_EMBED:
                continue
            raise ConfigError(f"{source}: tensor {name} is missing; the checkpoint does not match the "
                              f"model (model.n_layers={mcfg.n_layers}?)")
        got = tuple(state[name].shape)
        if got != shape:
            raise ConfigError(f"{source}: tensor {name} has shape {list(got)}, the jaxorder model expects "
                              f"{list(shape)}; set model.* (d_model, n_heads, d_ff, vocab_size, n_layers, "
                              f"max_len) to match the checkpoint")


def from_hf_state(state: dict[str, Any], mcfg: ModelConfig, like: Params) -> Params:
    """jaxorder params (numpy, float32) from HF tensors, shaped like `like` (a params pytree whose
    leaves have .shape, e.g. from jax.eval_shape). Tensors `like` lacks are ignored; a
    `target_embed` missing from `state` and a `length_head` are taken from `like` (its fresh
    initialization)."""
    d, H, D = mcfg.d_model, mcfg.n_heads, mcfg.head_dim
    get = lambda name: np.asarray(state[name], np.float32)  # noqa: E731
    out: dict[str, Any] = {"embed": get("model.embed_tokens.weight"),
                           "final_norm": {"scale": get("model.norm.weight")},
                           "head": np.ascontiguousarray(get("lm_head.weight").T)}
    if "target_embed" in like:
        out["target_embed"] = (get(TARGET_EMBED) if TARGET_EMBED in state
                               else np.asarray(like["target_embed"], np.float32))
    if "length_head" in like:  # an insertion model's length head: no HF counterpart, fresh init
        out["length_head"] = np.asarray(like["length_head"], np.float32)
    layers = []
    for i in range(mcfg.n_layers):
        p = f"model.layers.{i}."
        qkv_d3HD = np.stack([get(p + f"self_attn.{n}.weight").T.reshape(d, H, D)
                             for n in ("q_proj", "k_proj", "v_proj")], axis=1)
        layers.append({
            "attn": {"qkv": qkv_d3HD, "out": get(p + "self_attn.o_proj.weight").T.reshape(H, D, d)},
            "attn_norm": {"scale": get(p + "input_layernorm.weight")},
            "mlp": {"gate_up": np.stack([get(p + "mlp.gate_proj.weight").T, get(p + "mlp.up_proj.weight").T],
                                        axis=1),
                    "down": np.ascontiguousarray(get(p + "mlp.down_proj.weight").T)},
            "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight")},
        })
    if "layers" in like:
        out["layers"] = {k: {n: np.stack([layer[k][n] for layer in layers]) for n in layers[0][k]}
                         for k in layers[0]}
    else:
        out.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    return out
