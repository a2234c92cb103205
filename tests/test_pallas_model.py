"""The model trains the same with `attention_impl: xla` and `pallas` (kernel in interpret mode)."""
import jax
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step


def cfg_for(impl: str, objective: str):
    return config_lib.load(None, ["model.d_model=32", "model.n_heads=2", "model.n_layers=2",
                                  "model.max_len=64", "data.seq_len=16", "data.batch_size=4",
                                  f"objective.name={objective}", "objective.block_size=4",
                                  f"model.attention_impl={impl}", "model.pallas_interpret=true",
                                  "train.steps=3", "optimizer.warmup_steps=1"])


@pytest.mark.parametrize("objective", ["l2r", "bd3"])  # mdm: bidirectional, covered by the logits test
def test_pallas_attention_trains_like_xla(objective):
    tokens = np.random.default_rng(0).integers(0, 256, (4, 16), dtype=np.int32)
    losses = {}
    for impl in ("xla", "pallas"):
        cfg = cfg_for(impl, objective)
        optimizer = make_optimizer(cfg)
        state = init_state(cfg, optimizer)
        step = jax.jit(make_train_step(cfg, optimizer))
        out = []
        for _ in range(3):
            state, metrics = step(state, tokens)
            out.append(float(metrics["loss"]))
        losses[impl] = out
    np.testing.assert_allclose(losses["pallas"], losses["xla"], rtol=2e-5)


def test_pallas_logits_match_xla_for_each_mask_kind():
    cfg_x, cfg_p = cfg_for("xla", "l2r").model, cfg_for("pallas", "l2r").model
    params = model.init_params(cfg_x, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    pos = jax.random.permutation(jax.random.key(2), 16)[None].repeat(2, 0)  # permuted positions (ao_ar)
    for kind in ("causal", "bidirectional", "bd3:4"):
        a = model.apply(params, cfg_x, tokens, pos, kind)
        b = model.apply(params, cfg_p, tokens, pos, kind)
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=2e-5)
