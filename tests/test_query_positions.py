"""model.query_positions: any-order queries rotated by RoPE at their target position, keys at their own.

Against plain references: target = current positions is the current mode; the rotations the
attention layers apply are the reference RoPE of (queries: targets, keys: own positions); the
fused kernel (interpret mode) equals the reference with distinct query and key positions; the
ao_ar order pass, training step and KV-cache decoding follow the mode. The config settles `auto`
through the objective and refuses `target` where it has no meaning."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.model import decode
from jaxorder.model.transformer import Transformer, stack_layers
from jaxorder.objectives import ao_ar
from pallas_kernels import reference as ref

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_len=32", "data.seq_len=16")
B, L = 2, 16


def _cfg(mode: str, *extra: str):
    return config_lib.load(None, ("objective.name=ao_ar", f"model.query_positions={mode}", *TINY, *extra))


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg("current")
    params = jax.jit(lambda k: model.init_params(cfg.model, k, target_positions=True))(jax.random.key(0))
    tokens_BL = jax.random.randint(jax.random.key(1), (B, L), 0, 256)
    order_BL = jax.vmap(lambda k: jax.random.permutation(k, L))(jax.random.split(jax.random.key(2), B))
    return params, tokens_BL, order_BL.astype(jnp.int32)


def _mode(cfg, mode: str):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, query_positions=mode))


def test_target_equal_to_current_positions_is_the_current_mode(setup):
    """Catches a target mode that changes anything besides the query's rotation angle."""
    params, tokens_BL, order_BL = setup
    for scan in (False, True):  # the scanned layer body gets the query positions too
        cfg = _cfg("current", f"model.scan_layers={str(scan).lower()}").model
        p = stack_layers(params, 2) if scan else params
        a = model.apply(p, cfg, tokens_BL, order_BL, "causal", target_positions_BL=order_BL)
        b = model.apply(p, dataclasses.replace(cfg, query_positions="target"), tokens_BL, order_BL, "causal",
                        target_positions_BL=order_BL)
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


def test_rotations_are_queries_at_targets_and_keys_at_their_own_positions(setup):
    """The sown q/k of every layer, after RoPE, are the reference RoPE of the pre-RoPE ones at the
    target (queries) and current (keys) positions; catches keys rotated at the targets too, or
    queries left at the current positions."""
    params, tokens_BL, order_BL = setup
    cfg = _cfg("target").model
    current_BL = jnp.concatenate([jnp.zeros_like(order_BL[:, :1]), order_BL[:, :-1]], axis=1)
    _, state = Transformer(cfg).apply({"params": params}, tokens_BL, current_BL, "causal", order_BL,
                                      mutable=["intermediates"])
    for i in range(2):
        got = state["intermediates"][f"layer_{i}"]["attn"]
        q_want = ref.rope(got["q_pre_rope"][0], order_BL, 1e4)
        np.testing.assert_allclose(got["q_post_rope"][0], q_want, atol=1e-6)
        np.testing.assert_allclose(got["k_post_rope"][0], ref.rope(got["k_pre_rope"][0], current_BL, 1e4),
                                   atol=1e-6)


def test_order_pass_differs_between_modes_and_follows_the_config(setup):
    """ao_ar's order pass reads the mode from cfg.model (a switch that is ignored would pass the
    equality test above: here the two modes must differ on a random order)."""
    params, tokens_BL, order_BL = setup
    cur = ao_ar.order_nll(params, tokens_BL, order_BL, _cfg("current"))
    tgt = ao_ar.order_nll(params, tokens_BL, order_BL, _cfg("target"))
    assert np.abs(np.asarray(cur - tgt)).max() > 1e-4


def test_kernel_matches_reference_with_distinct_query_and_key_positions():
    """Interpret-mode kernel, forward and gradients, q_pos a different permutation than k_pos."""
    ks = jax.random.split(jax.random.key(4), 6)
    q, k, v, do = (jax.random.normal(kk, (2, 16, 2, 16)) for kk in ks[:4])
    q_pos = jax.vmap(lambda kk: jax.random.permutation(kk, 16))(jax.random.split(ks[4], 2)).astype(jnp.int32)
    k_pos = jax.vmap(lambda kk: jax.random.permutation(kk, 16))(jax.random.split(ks[5], 2)).astype(jnp.int32)

    def run(fn, **kw):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, q_pos, k_pos, mask=pk.causal(), **kw), q, k, v)
        return out, vjp(do)

    got = run(pk.rope_attention, block_q=8, block_k=8, interpret=True)
    want = run(ref.rope_attention)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5), got, want)
    same = run(lambda q, k, v, qp, kp, **kw: ref.rope_attention(q, k, v, kp, kp, **kw))
    assert np.abs(np.asarray(same[0] - want[0])).max() > 1e-3  # the case does tell q_pos from k_pos


def test_model_pallas_path_equals_xla_in_target_mode(setup):
    """The model hands the kernel the target positions for queries (catches a kernel call that
    still passes the key positions twice)."""
    params, tokens_BL, order_BL = setup
    cfg_x = _cfg("target", "model.attention_impl=xla").model
    cfg_p = _cfg("target", "model.attention_impl=pallas", "model.pallas_interpret=true").model
    current_BL = jnp.concatenate([jnp.zeros_like(order_BL[:, :1]), order_BL[:, :-1]], axis=1)
    a = model.apply(params, cfg_x, tokens_BL, current_BL, "causal", target_positions_BL=order_BL)
    b = model.apply(params, cfg_p, tokens_BL, current_BL, "causal", target_positions_BL=order_BL)
    np.testing.assert_allclose(b, a, atol=2e-5, rtol=2e-5)


def test_decode_step_equals_the_full_pass_in_target_mode(setup):
    """Prefill 12 slots, then one slot at a time: each new slot's query at its target, the cached
    keys at their own positions; logits equal the full causal pass."""
    params, tokens_BL, order_BL = setup
    cfg = _cfg("target").model
    current_BL = jnp.concatenate([jnp.zeros_like(order_BL[:, :1]), order_BL[:, :-1]], axis=1)
    full = model.apply(params, cfg, tokens_BL, current_BL, "causal", target_positions_BL=order_BL)
    logits, cache = decode.decode_step(params, cfg, decode.init_cache(cfg, B, L), tokens_BL[:, :12],
                                       current_BL[:, :12], target_positions_BL=order_BL[:, :12])
    steps = [logits]
    for j in range(12, L):
        logits, cache = decode.decode_step(params, cfg, cache, tokens_BL[:, j:j + 1], current_BL[:, j:j + 1],
                                           target_positions_BL=order_BL[:, j:j + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_config_settles_auto_and_refuses_target_without_targets(tmp_path):
    assert _cfg("auto").model.query_positions == ao_ar.QUERY_POSITIONS
    assert config_lib.load(None, ("objective.name=l2r",)).model.query_positions == "current"
    with pytest.raises(ConfigError, match="query_positions=target needs an objective with target"):
        config_lib.load(None, ("objective.name=l2r", "model.query_positions=target"))
    with pytest.raises(ConfigError, match="needs model.positions=rope"):
        _cfg("target", "model.positions=learned")
    with pytest.raises(ConfigError, match="model.query_positions"):
        _cfg("sideways")


def test_saved_configs_keep_their_mode_and_old_ones_read_as_current(tmp_path):
    """A run trained in one mode is read back in it; a config saved before the option existed
    (no key) is read as current, the only mode such a run had, whatever auto means today."""
    cfg = _cfg("target")
    config_lib.save(cfg, tmp_path / "new.yaml")
    assert config_lib.load_saved(tmp_path / "new.yaml").model.query_positions == "target"
    text = (tmp_path / "new.yaml").read_text()
    old = "\n".join(ln for ln in text.splitlines() if "query_positions" not in ln)
    (tmp_path / "old.yaml").write_text(old)
    assert config_lib.load_saved(tmp_path / "old.yaml").model.query_positions == "current"


# ----------------------------------------------------------------------------- model.target_adaln

def test_target_adaln_starts_as_the_plain_model_and_decodes_like_the_full_pass(setup):
    """Zero-initialized maps: the same logits as without adaLN (catches a modulation h * scale, or
    one applied without the 1 +); param_count counts the maps; with non-zero maps the modes differ,
    the maps get gradients, and KV-cache decoding (which must get the conditioning too) equals the
    full pass."""
    params, tokens_BL, order_BL = setup
    cfg = _cfg("target", "model.target_adaln=true")
    ada = jax.jit(lambda k: model.init_params(cfg.model, k, target_positions=True))(jax.random.key(0))
    assert model.count_params(ada) == cfg.model.param_count(target_positions=True)
    assert model.count_params(ada) == model.count_params(params) + 2 * 4 * 32 * 32
    base_cfg = _cfg("target")
    np.testing.assert_array_equal(ao_ar.order_nll(ada, tokens_BL, order_BL, cfg),
                                  ao_ar.order_nll(params, tokens_BL, order_BL, base_cfg))
    grads = jax.grad(lambda p: ao_ar.order_nll(p, tokens_BL, order_BL, cfg).sum())(ada)
    assert all(float(jnp.abs(grads[f"layer_{i}"]["target_mod"]).max()) > 0 for i in range(2))
    keys = jax.random.split(jax.random.key(7), 2)
    for i in range(2):
        ada[f"layer_{i}"] = dict(ada[f"layer_{i}"], target_mod=0.05 * jax.random.normal(keys[i], (32, 4, 32)))
    assert np.abs(np.asarray(ao_ar.order_nll(ada, tokens_BL, order_BL, cfg)
                             - ao_ar.order_nll(params, tokens_BL, order_BL, base_cfg))).max() > 1e-3
    current_BL = jnp.concatenate([jnp.zeros_like(order_BL[:, :1]), order_BL[:, :-1]], axis=1)
    full = model.apply(ada, cfg.model, tokens_BL, current_BL, "causal", target_positions_BL=order_BL)
    cache = decode.init_cache(cfg.model, B, L)
    steps = []
    for j0, j1 in ((0, 12), *((j, j + 1) for j in range(12, L))):
        logits, cache = decode.decode_step(ada, cfg.model, cache, tokens_BL[:, j0:j1], current_BL[:, j0:j1],
                                           target_positions_BL=order_BL[:, j0:j1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
    with pytest.raises(ConfigError, match="target_adaln needs an objective with target positions"):
        config_lib.load(None, ("objective.name=mdm", "model.target_adaln=true"))
