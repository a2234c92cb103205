"""`jaxorder eval --generate`: sample quality of a run (entropy, judge NLL, Sudoku validity)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxorder import config as config_lib
from jaxorder.data.synthetic import grid_conflicts, grid_to_string, sudoku_grids
from jaxorder.evaluation.sample_quality import default_judge, generation_quality, sudoku_grids_valid
from jaxorder.training.loop import train

from conftest import cli_in_process

TINY_SUDOKU = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.source=sudoku",
               "data.seq_len=82", "data.batch_size=8", "data.synthetic_tokens=20000", "train.steps=10",
               "train.eval_every=10", "train.checkpoint_every=10", "eval.batches=1",
               "eval.mdm_time_samples=1"]


def test_valid_grid_fraction_counts_full_lines_only():
    good = grid_to_string(sudoku_grids(1, seed=0)[0])
    bad = good[:40] + ("1" if good[40] != "1" else "2") + good[41:]
    texts = [good + "\n", bad + "\n", "12345\n" + good[:30]]  # the partial lines are not candidates
    # one changed cell breaks its row, column and box: 3 conflicts, (0 + 3) / 2 per grid
    assert sudoku_grids_valid(texts) == {"grids": 2, "valid_grids": 1, "valid_grid_fraction": 0.5,
                                         "grid_conflicts": 1.5}
    assert grid_conflicts("1" * 81) == 27 * 8 and grid_conflicts("x" * 81) == 27 * 9
    assert grid_conflicts("\u00e9" + good[1:]) == 3  # a non-ASCII character is a missing digit


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    for objective in ("mdm", "l2r"):
        train(config_lib.load(None, TINY_SUDOKU + [f"objective.name={objective}"]), out / objective)
    return out


def test_generation_quality_of_an_mdm_run_with_the_l2r_judge_beside_it(sweep_dir):
    assert default_judge(sweep_dir / "mdm") == sweep_dir / "l2r"
    r = generation_quality(sweep_dir / "mdm", num_samples=4, options={"steps": 8}, seed=1)
    assert r["sampler"] == "confidence" and r["num_samples"] == 4 and r["judge"] == "l2r"
    assert 0 < r["unigram_entropy_bits"] <= 8 and r["judge_bpb"] > 0 and r["tokens_per_s"] > 0
    assert r["grids"] <= 4 and 0.0 <= r["valid_grid_fraction"] <= 1.0
    # the cumulative uncertainty per generated token (nats, at most log of the vocabulary), beside the
    # quality, for every masked sampler
    assert 0 < r["uncertainty_per_token"] < 6.0


# slow: a second sampler compiled on the seq_len-82 model, with its judge pass (a minute on 2 busy cores).
# fast: info-gain in a sweep's generate grid with the l2r judge and the uncertainty,
# test_sweep.py::test_report_has_order_scores_and_slash_fraction
@pytest.mark.slow
def test_generation_quality_of_info_gain_with_its_options(sweep_dir):
    ig = generation_quality(sweep_dir / "mdm", num_samples=2, sampler="info-gain",
                            options={"steps": 8, "candidates": 2}, seed=1)
    assert ig["sampler"] == "info-gain" and ig["judge_bpb"] > 0 and 0 < ig["uncertainty_per_token"] < 6.0


def test_eval_generate_cli_json(sweep_dir):
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "eval", str(sweep_dir / "l2r"), "--generate",
                           "--num-samples", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["generate"]["sampler"] == "ar" and "judge" not in result["generate"]  # no other l2r run
    assert "valid_grid_fraction" in result["generate"]


def test_eval_generate_takes_the_sampler_options_of_sample(sweep_dir):
    """`eval --generate` accepts the option flags of `jaxorder sample` and refuses one the sampler
    does not read."""
    run = sweep_dir / "mdm"
    code, out, err = cli_in_process(["eval", run, "--generate", "--num-samples", "2", "--steps", "4",
                                     "--sampler", "threshold", "--threshold", "0.5", "--temperature", "0",
                                     "--json"])
    assert code == 0, err
    generated = json.loads(out)["generate"]
    assert generated["sampler"] == "threshold" and generated["steps"] == 4
    assert generated["forward_passes"] <= 4
    code, _, err = cli_in_process(["eval", run, "--generate", "--top-k", "3"])
    assert code == 2 and "the confidence sampler does not take 'top_k'" in err


def test_fast_masked_decoding_is_reachable_from_sample_and_eval(sweep_dir):
    """threshold / factor, Prophet and the approximate caches from `jaxorder sample` and `eval --generate`
    (a sweep's generate grid: the slow test below); a cache option on an AR run is a one-line error."""
    run = sweep_dir / "mdm"
    code, out, err = cli_in_process(["sample", run, "--sampler", "threshold", "--threshold", "0.5",
                                     "--approx-cache", "dual", "--block-length", "16", "--prophet", "5",
                                     "--steps", "82", "--length", "48", "--num-samples", "2", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["approx_cache"] == "dual" and res["prophet"] == 5.0 and res["complete"]
    code, out, err = cli_in_process(["sample", run, "--approx-cache", "chunked", "--chunk-length", "8",
                                     "--chunks", "1", "--prompt", "To be, or not to be, that is the question",
                                     "--length", "64", "--block-length", "8", "--steps", "24", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["approx_cache"] == "chunked" and res["chunks"] == 1 and res["complete"]
    code, out, err = cli_in_process(["eval", run, "--generate", "--num-samples", "2", "--sampler", "factor",
                                     "--factor", "2", "--approx-cache", "free", "--block-length", "16",
                                     "--json"])
    assert code == 0, err
    generated = json.loads(out)["generate"]
    assert generated["sampler"] == "factor" and generated["forward_passes"] <= 82
    assert 0.0 <= generated["ar_ness"] <= 1.0 and generated["commit_distance"] >= 1.0
    assert Path(generated["commit_order_png"]).read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli_in_process(["sample", sweep_dir / "l2r", "--approx-cache", "prefix"])
    assert code == 2 and "the ar sampler does not take 'approx_cache'" in err


# slow: the sweep trains a third run, then samples with and without the cache (minutes on 2 busy cores).
# fast: a generate grid over an option, test_registry_toys.py::test_toy_sampler_in_sample_and_in_a_sweep
@pytest.mark.slow
def test_fast_masked_decoding_is_reachable_from_a_sweeps_generate_grid(sweep_dir, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: fast\nbase: {sweep_dir / 'mdm' / 'config.yaml'}\n"
                     "generate: {num_samples: 2, samplers: [threshold], approx_cache: [none, dual], "
                     "block_length: 16}\n")
    from jaxorder.experiments.sweep import run_sweep
    results = run_sweep(sweep, tmp_path / "out")
    settings = [g.get("setting", "") for g in results[0]["generate"]]
    assert settings == ["approx_cache=none", "approx_cache=dual"], settings
