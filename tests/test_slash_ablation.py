"""The slash-head ablation: zeroing heads through the output projection, and its report."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.evaluation.yardstick import make_nll_fn
from jaxorder.experiments.analysis import analyze_capture, capture_attention, model_inputs
from jaxorder.experiments.analysis.ablation import ablate_heads, per_window_loss, slash_ablation
from jaxorder.model import transformer

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_len=32", "data.seq_len=16")


def _tokens(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 16), dtype=np.int32)


@pytest.mark.parametrize("layer, head", [(0, 1), (1, 0)])
def test_zeroed_output_rows_equal_removing_the_heads_attention_output(layer, head, monkeypatch):
    """Reference by hand: the model's own attention output of (layer, head) set to zero before the
    output projection (a spy on the XLA path, counting layers). Zeroing the wrong axis of W_out (a
    slice of d_model or of the head dim) or the wrong layer breaks the match."""
    cfg = config_lib.load(None, ("objective.name=mdm", *TINY))
    params = model.init_params(cfg.model, jax.random.key(0))
    tokens = _tokens(3)
    positions = np.broadcast_to(np.arange(16, dtype=np.int32), tokens.shape)
    got = np.asarray(model.apply(ablate_heads(params, [(layer, head)]), cfg.model, tokens, positions,
                                 "bidirectional"))
    calls = []
    real = transformer.xla_attention

    def without_head(q, k, v, mask, *ops):
        out = real(q, k, v, mask, *ops)
        calls.append(None)
        return out.at[:, :, head].set(0.0) if len(calls) - 1 == layer else out

    monkeypatch.setattr(transformer, "xla_attention", without_head)
    with jax.disable_jit():
        want = np.asarray(transformer.Transformer(cfg.model).apply({"params": params}, tokens, positions,
                                                                    "bidirectional"))
    assert len(calls) == 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain = np.asarray(model.apply(params, cfg.model, tokens, positions, "bidirectional"))
    assert np.abs(got - plain).max() > 1e-3  # the head mattered
    assert np.abs(np.asarray(params[f"layer_{layer}"]["attn"]["out"][head])).max() > 0  # caller's copy intact


def test_scanned_layout_zeroes_the_same_rows():
    cfg = config_lib.load(None, ("objective.name=l2r", *TINY))
    params = model.init_params(cfg.model, jax.random.key(0))
    heads = [(1, 1), (0, 0)]
    stacked = ablate_heads(transformer.stack_layers(params, 2), heads)
    want = transformer.stack_layers(ablate_heads(params, heads), 2)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("objective", ["l2r", "mdm"])
def test_report_fields_and_all_heads_case(objective):
    """The report's fields; with K = every head the top-K set and every random draw are the same set,
    so their loss changes agree exactly (random heads drawn with replacement, a loss with fresh noise
    per ablation, or the wrong ranking would break it); with K = 1 the top head is the best slash
    head and the change equals a direct recomputation."""
    cfg = config_lib.load(None, (f"objective.name={objective}", *TINY))
    params = model.init_params(cfg.model, jax.random.key(1))
    tokens = _tokens()
    model_in, kind, _ = model_inputs(tokens, cfg)
    positions = np.broadcast_to(np.arange(16, dtype=np.int32), model_in.shape)
    analysis = analyze_capture(capture_attention(params, cfg.model, model_in, positions, kind), 4)
    r = slash_ablation(cfg, params, analysis, tokens, k=4, draws=3)
    for key in ("k", "draws", "windows", "loss_base", "top_heads", "delta_top", "delta_top_se",
                "delta_random_mean", "delta_random_se", "random_deltas", "random_heads"):
        assert key in r, key
    assert r["windows"] == 6 and len(r["random_deltas"]) == 3 and r["delta_random_se"] == 0.0
    assert r["delta_random_mean"] == pytest.approx(r["delta_top"], abs=1e-6)

    one = slash_ablation(cfg, params, analysis, tokens, k=1, draws=2)
    best = max(analysis.table["heads"], key=lambda h: h["dominant_score"])
    assert one["top_heads"] == [[best["layer"], best["head"]]]
    nll_fn = make_nll_fn(cfg)
    base = per_window_loss(params, cfg, tokens, nll_fn)
    direct = per_window_loss(ablate_heads(params, [(best["layer"], best["head"])]), cfg, tokens, nll_fn)
    assert one["delta_top"] == pytest.approx(float((direct - base).mean()), abs=1e-6)
    with pytest.raises(ConfigError, match="--ablate-slash 5: give 1..4"):
        slash_ablation(cfg, params, analysis, tokens, k=5)
    with pytest.raises(ConfigError, match="--ablate-draws"):
        slash_ablation(cfg, params, analysis, tokens, k=1, draws=1)
