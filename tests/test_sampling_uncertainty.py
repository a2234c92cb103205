"""The cumulative uncertainty every masked sampler returns (`uncertainty`: the summed entropy of each
committed position under the step that committed it), against a replay of the decode's commits; the
tiny model, rows and replay are test_sampling_info_gain.py's (block diffusion's replay is tested there)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from test_sampling_info_gain import _replay_uncertainty, _rows, _sharp, tiny_model

from jaxorder.objectives.common import special_ids
from jaxorder.objectives.mdm import masked_log_probs

from conftest import run_sampler as sample
from conftest import spec, with_options


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.mark.parametrize("name,options", [
    ("confidence", {}), ("confidence", {"block_length": 4, "temperature": 0.0}), ("ancestral", {}),
    ("threshold", {"threshold": 0.02}), ("confidence", {"prophet": 0.01, "block_length": 6}),
    ("info-gain", {"candidates": 3})])
def test_uncertainty_is_the_entropy_at_commit_time(tiny, name, options):
    """Every masked sampler's `uncertainty` equals a replay: per step, the entropy (temperature 1) of
    the model's distribution at the positions it committed (Prophet's early commits included)."""
    cfg, params = tiny
    params = _sharp(params, 3.0)
    mask_id = special_ids(cfg.model).mask
    rows = _rows(cfg, 2, 12, {0: 72, 5: 32})
    out = jax.device_get(sample(params, cfg, rows, jax.random.key(2), spec(name, steps=5, **options)))
    want = _replay_uncertainty(lambda x: masked_log_probs(params, x, cfg), rows, out, mask_id)
    assert np.all(out["uncertainty"] > 0)
    np.testing.assert_allclose(out["uncertainty"], want, rtol=1e-4)
    if options.get("prophet"):
        assert np.all(out["early"] > 0)


@pytest.mark.parametrize("options", [{"fused": True}, {"approx_cache": "dual", "cache_refresh": 1},
                                     {"approx_cache": "prefix", "cache_refresh": 1}])
def test_uncertainty_of_the_fused_and_cached_loops(tiny, options):
    """The fused step (the kernel's online entropy) and a cache refreshed every step report the
    uncertainty of the plain loop."""
    cfg, params = tiny
    rows = _rows(cfg, 2, 12, {0: 72, 5: 32})
    sc = spec("confidence", steps=5, block_length=4, temperature=0.0)
    want = jax.device_get(sample(params, cfg, rows, jax.random.key(2), sc))
    got = jax.device_get(sample(params, cfg, rows, jax.random.key(2), with_options(sc, **options)))
    assert np.array_equal(got["tokens"], want["tokens"])
    np.testing.assert_allclose(got["uncertainty"], want["uncertainty"], rtol=1e-4)
