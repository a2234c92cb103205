"""Block-diffusion (bd3) sampler: KV cache vs the uncached [x_t ; x] reference, fixed tokens, seeds,
one block = the mdm sampler, block-autoregressive consistency and input errors.

A tiny randomly initialised model (d_model 32, 2 layers, n = 16, b = 4). Compilation dominates the
run time, so the tests share a few static configs (batch 3, 7 steps; the threshold value is traced)
and each compiles once per module. margin and entropy are not repeated here: the rule code is
``mdm.commit_step``, shared with the mdm samplers and tested there.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import bd3

from conftest import run_sampler, spec, with_options

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")
N, B_SIZE = 16, 4


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, ("objective.name=bd3", f"objective.block_size={B_SIZE}", *TINY))
    return cfg, model.init_params(cfg.model, jax.random.key(0))


def _rows(cfg, batch: int = 3) -> np.ndarray:
    """A prompt filling block 0 and one slot of block 1, an infilled fixed token in block 2."""
    rows = np.full((batch, N), special_ids(cfg.model).mask, np.int32)
    rows[:, :5] = [104, 101, 108, 108, 111]
    rows[:, 10] = 32
    return rows


def _run(params, cfg, rows, key, sc, cache=True) -> dict:
    return jax.device_get(run_sampler(params, cfg, rows, jax.random.key(key), with_options(sc, cache=cache)))


@pytest.mark.parametrize("name,temperature", [("confidence", 0.0), ("ancestral", 1.0), ("threshold", 1.0)])
def test_cached_equals_uncached(tiny, name, temperature):
    """Same key: the KV-cache path and the full [x_t ; x] recomputation commit the same tokens at the
    same steps, and the summed log p of the committed tokens (one per step's logits) agree."""
    cfg, params = tiny
    rows = _rows(cfg)
    sc = spec(name, steps=7, temperature=temperature,
              **({"threshold": 0.0045} if name == "threshold" else {}))
    got = _run(params, cfg, rows, 1, sc, cache=True)
    want = _run(params, cfg, rows, 1, sc, cache=False)
    assert np.array_equal(got["tokens"], want["tokens"])
    assert np.array_equal(got["commits"], want["commits"]) and int(got["steps"]) == int(want["steps"])
    np.testing.assert_allclose(got["logprob"], want["logprob"], rtol=1e-5)
    assert np.all(got["complete"]) and np.all(want["complete"])
    # nfe: the same denoising passes, plus one cache write per block but the last
    assert int(got["nfe"]) == int(want["nfe"]) + N // B_SIZE - 1
    if name == "threshold":  # the threshold really fires: fewer steps than the budget
        assert int(got["steps"]) < 7


@pytest.mark.parametrize("name,temperature", [("ancestral", 1.0), ("confidence", 0.0)])
def test_fixed_tokens_kept_every_mask_filled_and_seeds(tiny, name, temperature):
    cfg, params = tiny
    mask_id = special_ids(cfg.model).mask
    rows = _rows(cfg)
    fixed = rows != mask_id
    sc = spec(name, steps=7, temperature=temperature)
    a = _run(params, cfg, rows, 5, sc)
    assert np.array_equal(a["tokens"][fixed], rows[fixed]), "a fixed token changed"
    assert not np.any(a["tokens"] == mask_id) and np.all(a["complete"]), "a mask was left or MASK sampled"
    assert (a["commits"].sum(axis=0).tolist() == [int((~fixed[0]).sum())] * 3
            and np.all(np.isfinite(a["logprob"])))
    # blocks 1..3 have masks (block 0 is prompt only): 7 steps split 3, 2, 2 and each block is
    # complete after its own steps (3, 3 and 4 masks)
    per_block = [a["commits"][0:3].sum(axis=0), a["commits"][3:5].sum(axis=0), a["commits"][5:7].sum(axis=0)]
    assert [c.tolist() for c in per_block] == [[3] * 3, [3] * 3, [4] * 3]
    other_seed = _run(params, cfg, rows, 6, sc)
    if temperature == 0:  # k-best at T = 0: no randomness at all, identical rows give identical samples
        assert np.array_equal(a["tokens"], other_seed["tokens"]) and np.all(a["tokens"] == a["tokens"][0])
    else:
        assert not np.array_equal(a["tokens"], other_seed["tokens"]), (
            "another seed gave the same samples at T=1")
        same_seed = _run(params, cfg, rows, 5, sc)
        assert np.array_equal(a["tokens"], same_seed["tokens"]), "same seed, different samples"


def test_blocks_depend_only_on_earlier_blocks(tiny):
    """Autoregression over blocks: feeding the first two generated blocks back as a prompt (T = 0,
    the same steps for the remaining blocks: 7 over 4 blocks = 2, 2, 2, 1; 3 over 2 = 2, 1)
    regenerates the same last two blocks."""
    cfg, params = tiny
    mask_id = special_ids(cfg.model).mask
    sc = spec("confidence", steps=7, temperature=0.0)
    full = _run(params, cfg, np.full((3, N), mask_id, np.int32), 0, sc)
    assert not np.all(full["tokens"] == full["tokens"][0, 0])
    prompt = np.array(full["tokens"])
    prompt[:, 2 * B_SIZE:] = mask_id
    again = _run(params, cfg, prompt, 0, with_options(sc, steps=3))
    assert np.array_equal(again["tokens"], full["tokens"])


@pytest.mark.parametrize("name,temperature", [("threshold", 1.0), ("ancestral", 1.0)])
def test_one_block_is_the_mdm_sampler(tiny, name, temperature):
    """b = n: the noisy half sees only itself, i.e. the bidirectional model on x_t; with the same
    rule, steps and key the bd3 sampler gives mdm.sample's tokens and commits (the uncached path
    equals the cached one, tested above)."""
    _, params = tiny
    cfg = config_lib.load(None, ("objective.name=bd3", f"objective.block_size={N}", *TINY))
    mdm_cfg = config_lib.load(None, ("objective.name=mdm", *TINY))
    rows = _rows(cfg)
    sc = spec(name, steps=7, temperature=temperature,
              **({"threshold": 0.0045} if name == "threshold" else {}))
    want = jax.device_get(run_sampler(params, mdm_cfg, rows, jax.random.key(2), sc))
    got = _run(params, cfg, rows, 2, sc)
    assert np.array_equal(got["tokens"], want["tokens"]) and np.array_equal(got["commits"], want["commits"])
    assert int(got["nfe"]) == int(want["nfe"]) and int(got["steps"]) == int(want["steps"])
    np.testing.assert_allclose(got["logprob"], want["logprob"], rtol=1e-5)


def test_step_budget():
    masked = np.zeros((2, 16), bool)
    masked[0, 5:7] = True  # block 1 (row 0 only)
    masked[1, 12:] = True  # block 3
    assert bd3.step_budget(masked, 4, 5).tolist() == [0, 3, 0, 2]
    assert bd3.step_budget(np.zeros((1, 8), bool), 4, 1).tolist() == [0, 0]
    with pytest.raises(ConfigError, match="cannot fill 2 blocks"):
        bd3.step_budget(masked, 4, 1)


def test_bad_inputs(tiny):
    cfg, params = tiny
    rows = _rows(cfg)
    sc = spec("confidence", steps=4)
    key = jax.random.key(0)
    block_confidence = sampling.resolve(cfg, "confidence")
    with pytest.raises(ConfigError, match="decodes block runs, not mdm"):
        sampling.sample(params, config_lib.load(None, ("objective.name=mdm", *TINY)), rows, key,
                        block_confidence)
    with pytest.raises(ConfigError, match="multiple of the block size 4, got 14; use 12 or 16"):
        run_sampler(params, cfg, rows[:, :14], key, sc)
    with pytest.raises(ConfigError, match="does not take 'block_length'"):
        run_sampler(params, cfg, rows, key, with_options(sc, block_length=4))
    with pytest.raises(ConfigError, match="does not take 'fused'"):
        run_sampler(params, cfg, rows, key, with_options(sc, fused=True))
    with pytest.raises(ConfigError, match="use --steps >= 3"):
        run_sampler(params, cfg, rows, key, with_options(sc, steps=2))
    with pytest.raises(ConfigError, match="unknown sampler 'nope'; for bd3 runs"):
        run_sampler(params, cfg, rows, key, ("nope", sc[1]))
