"""`jaxorder sample` for block-diffusion and any-order runs (tiny runs trained a few steps)."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from jaxorder import config as config_lib
from jaxorder.training.loop import train

from conftest import cli_in_process

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16", "data.batch_size=8",
        "train.steps=3", "train.eval_every=3", "train.checkpoint_every=3", "train.async_checkpointing=false",
        "eval.batches=1", "eval.mdm_time_samples=1")


def _run(tmp_path, corpus, *overrides):
    cfg = config_lib.load(None, (*TINY, "data.source=text", f"data.path={corpus}", *overrides))
    run = tmp_path / cfg.objective.name
    with contextlib.redirect_stderr(io.StringIO()):
        train(cfg, run)
    return run


def test_bd3_run_fills_a_template_block_by_block(tmp_path, repeated_corpus):
    run = _run(tmp_path, repeated_corpus, "objective.name=bd3", "objective.block_size=4")
    code, out, _ = cli_in_process(["sample", run, "--template", "the [MASK:7]at on", "--steps", "4",
                                   "--num-samples", "2", "--json"])
    assert code == 0
    res = json.loads(out)
    assert res["objective"] == "bd3" and res["sampler"] == "confidence" and res["complete"]
    for s in res["samples"]:
        assert s["text"].startswith("the ") and s["text"].endswith("at on") and len(s["tokens"]) == 16
    code, _, err = cli_in_process(["sample", run, "--template", "the [MASK:6]at on"])
    assert code == 2 and "multiple of the block size 4, got 15" in err
    code, _, err = cli_in_process(["sample", run, "--block-length", "4"])
    assert code == 2 and "the confidence sampler does not take 'block_length'" in err


@pytest.mark.parametrize("objective", ["ao_ar", "latent_order"])
def test_any_order_run_samples_in_the_named_order(tmp_path, repeated_corpus, objective):
    run = _run(tmp_path, repeated_corpus, f"objective.name={objective}")
    code, out, err = cli_in_process(["sample", run, "--sampler", "greedy", "--prompt", "the cat",
                                     "--num-samples", "2", "--seed", "3", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert (res["sampler"] == "greedy" and res["generated_tokens"] == 2 * 9
            and res["forward_passes"] == 1 + 2 * 9)
    for s in res["samples"]:
        assert s["text"].startswith("the cat") and sorted(s["order"]) == list(range(16))
        assert s["order"][:7] == list(range(7))  # the prompt is conditioned on first
    code, out, _ = cli_in_process(["sample", run, "--sampler", "r2l", "--template", "[MASK:4] sat on the mat",
                                   "--temperature", "0", "--json"])
    assert code == 0 and json.loads(out)["samples"][0]["text"].endswith(" sat on the mat")
    code, _, err = cli_in_process(["sample", run, "--sampler", "ar"])
    assert code == 2 and (f"unknown sampler 'ar'; for {objective} runs use one of l2r, r2l, random, "
                          f"greedy") in err
