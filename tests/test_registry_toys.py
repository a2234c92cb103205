"""A new order family and a new sampler, each defined and registered from this file alone, work
through the public API: config validation, `train`, `jaxorder eval --json`, `jaxorder sample` and a
sweep's `generate:`. The proof that adding an order or a decoder is a one-file change."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.experiments.sweep import run_sweep
from jaxorder.objectives import Objective, Option, l2r, register
from jaxorder.objectives.common import special_ids, token_nll
from jaxorder.objectives.mdm import masked_log_probs
from jaxorder.registry import OBJECTIVES, SAMPLERS
from jaxorder.sampling import Sampler
from jaxorder.sampling.base import Prepared
from jaxorder.training.loop import train

from conftest import cli_in_process, tiny_config_yaml

# ----------------------------------------------------------------------------- a toy order family

def smoothed_loss(params, batch, rng, cfg):
    """Left-to-right AR trained with label smoothing; its yardstick is the exact l2r NLL."""
    del rng
    tokens_BL = batch["tokens"]
    bos = special_ids(cfg.model).bos
    inputs_BL = jnp.concatenate([jnp.full_like(tokens_BL[:, :1], bos), tokens_BL[:, :-1]], axis=1)
    positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    from jaxorder import model

    logits_BLV = model.apply(params, cfg.model, inputs_BL, positions_BL, "causal")
    uniform_BL = -jax.nn.log_softmax(logits_BLV, axis=-1).mean(axis=-1)
    eps = cfg.objective.smoothing  # the family's own config knob, declared below
    value = ((1 - eps) * token_nll(logits_BLV, tokens_BL) + eps * uniform_BL).mean()
    return value, {"loss": value, "nll_per_token": value}


def needs_even_windows(cfg):
    if cfg.data.seq_len % 2:
        raise ConfigError(f"l2r_smooth needs an even data.seq_len, got {cfg.data.seq_len}")
    if not 0 <= cfg.objective.smoothing < 1:
        raise ConfigError(f"objective.smoothing must be in [0, 1), got {cfg.objective.smoothing}")


TOY_OBJECTIVE = Objective(name="l2r_smooth", loss=smoothed_loss, nll=l2r.nll, exact=True,
                          yardstick="exact (toy)", sampling="ar", default_sampler="ar",
                          options=(Option("smoothing", 0.1, "label smoothing of the training loss"),),
                          validate_config=needs_even_windows)


@pytest.fixture
def toy_objective():
    with OBJECTIVES.registered(TOY_OBJECTIVE):
        yield TOY_OBJECTIVE


def test_toy_objective_trains_evaluates_and_samples(tmp_path, text_corpus, toy_objective):
    with pytest.raises(ConfigError, match="needs an even data.seq_len"):
        config_lib.load(None, ["objective.name=l2r_smooth", "data.seq_len=31"])
    with pytest.raises(ConfigError, match=r"objective.smoothing must be in \[0, 1\), got 1.5"):
        config_lib.load(None, ["objective.name=l2r_smooth", "objective.smoothing=1.5"])
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(tiny_config_yaml(text_corpus, steps=20, checkpoint_every=20,
                                            objective="l2r_smooth"))
    run_dir = tmp_path / "run"
    cfg = config_lib.load(config_file, ["objective.smoothing=0.2"])
    assert cfg.objective.smoothing == 0.2 and config_lib.to_dict(cfg)["objective"]["smoothing"] == 0.2
    result = train(cfg, run_dir)
    assert result["objective"] == "l2r_smooth" and result["kind"] == "exact (toy)" and 0 < result["bpb"] < 8
    code, out, err = cli_in_process(["eval", run_dir, "--json"])
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["kind"] == "exact (toy)" and evaluated["bpb"] == pytest.approx(result["bpb"], rel=1e-6)
    code, out, err = cli_in_process(["sample", run_dir, "--prompt", "the", "--length", "16", "--temperature",
                                     "0", "--json"])
    assert code == 0, err
    sampled = json.loads(out)
    assert sampled["sampler"] == "ar" and sampled["samples"][0]["text"].startswith("the")
    code, _, err = cli_in_process(["sample", run_dir, "--steps", "4"])
    assert code == 2 and "the ar sampler does not take 'steps'" in err


def test_unregistered_objective_is_a_one_line_error():
    with pytest.raises(ConfigError, match="objective.name='l2r_smooth' is not one of"):
        config_lib.load(None, ["objective.name=l2r_smooth"])
    with pytest.raises(ConfigError, match="unknown config key 'objective.smoothing'"):
        config_lib.load(None, ["objective.smoothing=0.2"])


def test_families_must_declare_a_shared_option_alike():
    clash = Objective(name="clash", loss=smoothed_loss, nll=l2r.nll, exact=True, yardstick="exact",
                      sampling="ar", default_sampler="ar", options=(Option("block_size", 8, "bd3's is 4"),))
    with pytest.raises(ValueError, match="declares option 'block_size' unlike 'bd3' does"):
        register(clash)


# ----------------------------------------------------------------------------- a toy sampler

def one_pass_prepare(cfg, tokens_BL: np.ndarray, options) -> Prepared:
    del cfg, options
    return Prepared(static=None, args=(jnp.asarray(tokens_BL),))


def one_pass_build(cfg, static):
    """Fills every MASK at once with the argmax of one bidirectional pass."""
    del static
    mask_id = special_ids(cfg.model).mask

    def run(params, key, tokens_BL):
        del key
        logp_BLV = masked_log_probs(params, tokens_BL, cfg)
        best_BL = jnp.argmax(logp_BLV, axis=-1).astype(jnp.int32)
        masked_BL = tokens_BL == mask_id
        lp_BL = jnp.take_along_axis(logp_BLV, best_BL[..., None], axis=-1)[..., 0]
        return dict(tokens=jnp.where(masked_BL, best_BL, tokens_BL),
                    logprob=jnp.where(masked_BL, lp_BL, 0.0).sum(1), nfe=jnp.int32(1), steps=jnp.int32(1))

    return run


TOY_SAMPLER = Sampler(name="one_pass", family="masked", options=(), prepare=one_pass_prepare,
                      build=one_pass_build)


def test_toy_sampler_in_sample_and_in_a_sweep(tmp_path, text_corpus):
    base = tmp_path / "base.yaml"
    base.write_text(tiny_config_yaml(text_corpus, steps=10, checkpoint_every=10, eval_every=10,
                                     objective="mdm"))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: toys\nbase: {base}\n"
                     "generate: {num_samples: 2, samplers: [one_pass, confidence], steps: [4, 8]}\n")
    with SAMPLERS.registered(TOY_SAMPLER):
        results = run_sweep(sweep, tmp_path / "out")
        run_dir = tmp_path / "out" / "base"
        code, out, err = cli_in_process(["sample", run_dir, "--sampler", "one_pass", "--template",
                                         "the [MASK:4] sat", "--json"])
        assert code == 0, err
        sampled = json.loads(out)
        assert sampled["sampler"] == "one_pass" and sampled["forward_passes"] == 1 and sampled["complete"]
        assert (sampled["samples"][0]["text"].startswith("the ")
                and sampled["samples"][0]["text"].endswith(" sat"))
        code, _, err = cli_in_process(["sample", run_dir, "--sampler", "one_pass", "--steps", "4"])
        assert code == 2 and "the one_pass sampler does not take 'steps'; it takes: no options" in err
    rows = [(g["sampler"], g.get("setting", ""), g["forward_passes"]) for g in results[0]["generate"]]
    # the run's default sampler first, one row per steps value; steps does not apply to one_pass: one row
    assert rows == [("confidence", "steps=4", 4), ("confidence", "steps=8", 8), ("one_pass", "", 1)]
    assert "one_pass" in (tmp_path / "out" / "samplers.csv").read_text()
    code, _, err = cli_in_process(["sample", run_dir, "--sampler", "one_pass"])  # unregistered again
    assert code == 2 and "unknown sampler 'one_pass'" in err
