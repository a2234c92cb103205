"""model.positions: rope | learned | none. Each kind trains, decodes with the KV cache as the full pass
does, and carries (or does not carry) the position signal it claims."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.model import decode
from jaxorder.model.rope import rope_base_lower_bound
from jaxorder.objectives import ao_ar
from jaxorder.objectives.common import special_ids
from jaxorder.platform.aot import rope_base_warning
from jaxorder.sampling import SamplerOptions, sample
from jaxorder.sampling.ar import banned_tokens
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_len=32", "data.seq_len=16",
        "data.batch_size=8")
KINDS = ("rope", "learned", "none")


def _cfg(objective: str, kind: str, *extra: str):
    return config_lib.load(None, (f"objective.name={objective}", f"model.positions={kind}", *TINY, *extra))


def test_config_choices_and_param_count():
    with pytest.raises(ConfigError, match="model.positions='alibi' is not one of: rope, learned, none"):
        config_lib.load(None, ("model.positions=alibi",))
    with pytest.raises(ConfigError, match="init_from needs model.positions=rope"):
        config_lib.load(None, ("model.positions=none", "model.init_from=hf:/x"))
    for kind in KINDS:  # the learned table is in the count (and only there)
        cfg = _cfg("l2r", kind)
        params = model.init_params(cfg.model, jax.random.key(0))
        assert model.count_params(params) == cfg.model.param_count()
        assert ("pos_embed" in params) == (kind == "learned")


@pytest.mark.parametrize("objective", ["l2r", "mdm"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains(objective, kind):
    """12 steps on one repeated batch lower the loss (mdm: averaged over 3 steps, its masks are random).
    A position embedding that got no gradient or a broken forward pass would not learn."""
    cfg = _cfg(objective, kind, "optimizer.warmup_steps=1")
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    text = np.frombuffer(b"to be or not to be, that is the question. " * 4, np.uint8).astype(np.int32)
    tokens = jnp.asarray(np.stack([text[i:i + 16] for i in range(0, 64, 8)]))
    step = jax.jit(make_train_step(cfg, optimizer))
    losses = []
    for _ in range(12):
        state, metrics = step(state, tokens)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("kind", KINDS)
def test_l2r_kv_cache_equals_full_pass_and_greedy_reference(kind):
    """Token-by-token decoding equals the causal full pass; the AR sampler at temperature 0 equals a
    greedy loop of full passes (a learned table looked up by slot instead of position id, or RoPE
    applied in one path only, breaks this)."""
    cfg = _cfg("l2r", kind)
    params = model.init_params(cfg.model, jax.random.key(1))
    toks = jax.random.randint(jax.random.key(2), (2, 10), 0, 256)
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    want = np.asarray(model.apply(params, cfg.model, toks, pos, "causal"))
    got, cache = decode.decode_step(params, cfg.model, decode.init_cache(cfg.model, 2, 12), toks[:, :4],
                                    pos[:, :4])
    steps = [got]
    for j in range(4, 10):
        got, cache = decode.decode_step(params, cfg.model, cache, toks[:, j:j + 1], pos[:, j:j + 1])
        steps.append(got)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, axis=1)), want, atol=1e-4)

    ids = special_ids(cfg.model)
    prompt = np.array([[84, 104, 101], [65, 32, 99]], np.int32)
    rows = np.concatenate([prompt, np.full((2, 6), ids.mask, np.int32)], axis=1)
    out = jax.device_get(sample(params, cfg, rows, jax.random.key(0), "ar", SamplerOptions(temperature=0.0,
                                                                                    ignore_eos=True)))
    x = prompt.copy()
    for _ in range(6):  # the l2r model reads BOS, x_0, ..., x_{n-1} at positions 0..n
        inputs = np.concatenate([np.full((2, 1), ids.bos, np.int32), x], axis=1)
        logits = model.apply(params, cfg.model, jnp.asarray(inputs),
                             jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape), "causal")
        nxt = np.asarray(jnp.where(banned_tokens(cfg.model), -jnp.inf, logits[:, -1])).argmax(-1)
        x = np.concatenate([x, nxt[:, None].astype(np.int32)], axis=1)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), x)


@pytest.mark.parametrize("kind", KINDS)
def test_mdm_cached_sampler_equals_uncached(kind):
    """One layer: a slot's keys/values depend on its own token and position only, so the dual cache is
    exact and its samples equal the uncached sampler's (see test_sampling_mdm_fast)."""
    cfg = _cfg("mdm", kind, "model.n_layers=1", "data.seq_len=24")
    params = model.init_params(cfg.model, jax.random.key(1))
    params = dict(params, head=params["head"] * 30.0)
    rows = np.full((2, 24), special_ids(cfg.model).mask, np.int32)
    rows[:, :4] = np.array([[84, 104, 101, 32], [65, 32, 99, 97]])
    opts = dict(steps=10, temperature=1.0, block_length=8)
    base = jax.device_get(sample(params, cfg, rows, jax.random.key(3), "confidence", SamplerOptions(**opts)))
    out = jax.device_get(sample(params, cfg, rows, jax.random.key(3), "confidence",
                                SamplerOptions(**opts, approx_cache="dual")))
    np.testing.assert_array_equal(out["tokens"], base["tokens"])
    assert int(out["rows"]) < int(base["rows"])


@pytest.mark.parametrize("kind", ["learned", "none"])
def test_any_order_decoding_equals_order_logits(kind):
    """ao_ar keeps its target-position embedding under every kind: slot-by-slot decoding over a
    permuted prefix equals the one-pass order logits."""
    cfg = _cfg("ao_ar", kind)
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=True)
    n = 8
    toks = jax.random.randint(jax.random.key(5), (2, n), 0, 250)
    order = jnp.stack([jax.random.permutation(jax.random.key(6), n), jnp.arange(n)[::-1]]).astype(jnp.int32)
    want = np.asarray(ao_ar.order_logits(params, toks, order, cfg)[0])
    permuted = jnp.take_along_axis(toks, order, axis=1)
    inputs = jnp.concatenate([jnp.full((2, 1), 258), permuted[:, :-1]], axis=1)
    positions = jnp.concatenate([jnp.zeros((2, 1), jnp.int32), order[:, :-1]], axis=1)
    cache = decode.init_cache(cfg.model, 2, n)
    steps = []
    for j in range(n):
        got, cache = decode.decode_step(params, cfg.model, cache, inputs[:, j:j + 1], positions[:, j:j + 1],
                                        target_positions_BL=order[:, j:j + 1])
        steps.append(got)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, axis=1)), want, atol=1e-4)


def test_none_is_permutation_equivariant_and_learned_is_not():
    """Bidirectional (mdm) pass: with no position signal, permuting the input permutes the output;
    learned and rope positions make the output depend on where a token sits."""
    perm = np.random.default_rng(0).permutation(12)
    toks = jax.random.randint(jax.random.key(7), (2, 12), 0, 256)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    for kind in KINDS:
        cfg = _cfg("mdm", kind)
        params = model.init_params(cfg.model, jax.random.key(8))
        out = np.asarray(model.apply(params, cfg.model, toks, pos, "bidirectional"))
        out_perm = np.asarray(model.apply(params, cfg.model, toks[:, perm], pos, "bidirectional"))
        equivariant = np.allclose(out_perm, out[:, perm], atol=1e-4)
        assert equivariant == (kind == "none"), kind


@pytest.mark.parametrize("kind", ["learned", "none"])
def test_pallas_path_skips_rotation(kind):
    """The fused kernel (its reference on CPU) gets position 0 everywhere for learned/none, the identity
    rotation: its logits equal the XLA path's, which never rotates."""
    cfg = _cfg("l2r", kind)
    params = model.init_params(cfg.model, jax.random.key(0))
    toks = jax.random.randint(jax.random.key(9), (2, 12), 0, 256)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    for mask in ("causal", "bidirectional"):
        xla = model.apply(params, dataclasses.replace(cfg.model, attention_impl="xla"), toks, pos, mask)
        pallas = model.apply(params, dataclasses.replace(cfg.model, attention_impl="pallas"), toks, pos, mask)
        np.testing.assert_allclose(np.asarray(pallas), np.asarray(xla), atol=1e-4)


# ----------------------------------------------------------------------------- RoPE base bound

def _criterion_brute(base: float, head_dim: int, context: int) -> bool:
    """B_m = sum_i cos(m * base^(-2i/D)) >= 0 for every m < context, one distance at a time."""
    import math

    theta = [base ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    return all(sum(math.cos(m * t) for t in theta) >= 0 for m in range(context))


def test_rope_base_bound_is_the_edge_of_the_criterion_and_grows_with_context():
    """At the returned base the criterion holds, just below it fails (a bisection that returned the
    wrong end, or a criterion over the wrong distances, breaks this), and the bound never falls as the
    context grows; every larger base on a log grid also passes."""
    bounds = [rope_base_lower_bound(16, L) for L in (16, 32, 64, 128, 256)]
    assert bounds == sorted(bounds) and bounds[-1] > 10 * bounds[0]
    for L, bound in zip((16, 32, 64, 128, 256), bounds):
        assert _criterion_brute(bound, 16, L)
        assert not _criterion_brute(bound * (1 - 1e-5), 16, L)
        assert all(_criterion_brute(b, 16, L) for b in np.geomspace(bound, 1e4 * bound, 12))
    assert rope_base_lower_bound(16, 2) == 1.0  # m < 2: cos(m theta) > 0 for every base >= 1


def test_rope_base_warning_only_below_the_bound():
    report = {"rope_base_bound": 5000.0, "rope_base": 100.0, "max_len": 1024}
    assert rope_base_warning(report).startswith("warning: model.rope_base=100 is below 5000")
    assert rope_base_warning({**report, "rope_base": 5000.0}) == ""
    assert rope_base_warning({**report, "rope_base_bound": None}) == ""


def test_positions_sweep_expands_to_the_ablation_grid():
    from pathlib import Path

    from jaxorder.experiments.sweep import expand, load_sweep

    runs = expand(load_sweep(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "positions.yaml"))
    got = {(c.objective.name, c.model.positions, c.model.rope_base if c.model.positions == "rope" else None)
           for _, c in runs}
    kinds = (("none", None), ("learned", None), ("rope", 100.0), ("rope", 1e4), ("rope", 5e5))
    assert got == {(o, p, b) for o in ("l2r", "mdm") for p, b in kinds}
    assert len(runs) == 10
