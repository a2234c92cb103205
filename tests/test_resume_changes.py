"""Resuming a run directory with changed keys: train.steps and the cadences may change (recorded in
history.jsonl), every other change is refused with one line naming the key."""
from __future__ import annotations

import dataclasses
import shutil

import jax
import numpy as np
import pytest

from jaxorder import cli
from jaxorder.config import ConfigError
from jaxorder.evaluation.runs import load_params
from jaxorder.training.loop import train
from jaxorder.training.metrics import read_metrics
from jaxorder.training.run_dir import read_history

from conftest import TINY, step_dirs, train_on_corpus


@pytest.fixture(scope="module")
def three_step_run(tmp_path_factory, repeated_corpus):
    run = tmp_path_factory.mktemp("resume") / "run"
    cfg = train_on_corpus(run, TINY, repeated_corpus, steps=3)
    return run, cfg


def test_a_finished_run_continues_to_more_steps(three_step_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(three_step_run[0], run)
    cfg = three_step_run[1]
    _, params3, _ = load_params(run)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=5, checkpoint_every=5,
                                                                 eval_every=5))
    result = train(longer, run)
    err = capsys.readouterr().err
    assert "resumed from checkpoint at step 3" in err and "already trained" not in err, err
    assert result["step"] == 5 and step_dirs(run) == [3, 5]
    _, params5, step = load_params(run)
    assert step == 5
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params3), jax.tree.leaves(params5)))
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [3, 5]
    history = read_history(run)
    assert [h["from_step"] for h in history] == [0, 3]
    assert history[0]["changes"] == []
    assert sorted(history[1]["changes"]) == ["train.checkpoint_every: 3 -> 5", "train.eval_every: 3 -> 5",
                                             "train.steps: 3 -> 5"]


def test_fewer_steps_than_the_newest_checkpoint_is_refused(three_step_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(three_step_run[0], run)
    cfg = three_step_run[1]
    shorter = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2))
    with pytest.raises(ConfigError, match=r"train.steps=2 is below the newest checkpoint .* \(step 3\)"):
        train(shorter, run)
    assert step_dirs(run) == [3]


def test_any_other_change_is_refused_naming_the_key(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run), "optimizer.b1=0.8",
                     "train.steps=40"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "optimizer.b1: 0.9 -> 0.8" in lines[0] and "train.steps" not in lines[0]
