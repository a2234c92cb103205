"""train.stop_at (a resumable pause) and train.restarts (seeds trained to restart_steps, the one with
the lowest bound on validation windows apart from the reported ones continued): against plain
uninterrupted training of the chosen seed."""
import contextlib
import io
import json

import jax
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.data import make_data
from jaxorder.evaluation.runs import checkpoint_steps, load_params
from jaxorder.evaluation.yardstick import evaluate
from jaxorder.experiments.restarts import train_with_restarts
from jaxorder.training.loop import train

from conftest import TINY


def tiny(corpus, *overrides):
    return config_lib.load(None, (*TINY, "data.source=text", f"data.path={corpus}", "data.batch_size=8",
                                  "train.steps=12", "train.eval_every=4", "train.checkpoint_every=4",
                                  "train.async_checkpointing=false", "eval.batches=1", *overrides))


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def same_params(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stop_at_pauses_without_a_final_evaluation_and_going_on_equals_one_run(tmp_path, text_corpus):
    paused = quiet(train, tiny(text_corpus, "train.stop_at=6"), tmp_path / "a")
    assert paused == {"run": "a", "step": 6, "paused": True}
    assert checkpoint_steps(tmp_path / "a")[-1] == 6 and not (tmp_path / "a" / "eval.json").exists()
    assert quiet(train, tiny(text_corpus, "train.stop_at=6"), tmp_path / "a")["step"] == 6  # re-run: no-op
    done = quiet(train, tiny(text_corpus), tmp_path / "a")
    whole = quiet(train, tiny(text_corpus), tmp_path / "b")
    assert done["step"] == 12 and done["bpb"] == whole["bpb"]
    same_params(load_params(tmp_path / "a")[1], load_params(tmp_path / "b")[1])


def test_shifted_validation_windows_are_apart_from_the_reported_ones(text_corpus):
    data = make_data(tiny(text_corpus, "data.seq_len=8").data)
    n = len(data.val_windows)
    reported, shifted = data.val_batches(2), data.val_batches(2, shifted=True)
    assert n >= 2 * 16, n  # the test needs a split that holds both sets
    assert [b.shape for b in reported] == [b.shape for b in shifted]
    as_rows = lambda bs: {tuple(row) for b in bs for row in b}  # noqa: E731
    assert not as_rows(reported) & as_rows(shifted)
    np.testing.assert_array_equal(data.val_batches(2)[0], reported[0])  # the reported set is unchanged


def test_restarts_continue_the_candidate_with_the_lowest_selection_bound(tmp_path, text_corpus):
    """Three seeds to step 4, scored on the shifted windows; the lowest goes on to step 12 in the run
    directory, and the result equals plain training of that seed. Re-running the command is a no-op;
    other restart settings on the same directory are a config error."""
    over = ("train.restarts=3", "train.restart_steps=4", "train.seed=5")
    result = quiet(train_with_restarts, tiny(text_corpus, *over), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "restarts.json").read_text())
    assert [c["seed"] for c in record["candidates"]] == [5, 6, 7]
    data = make_data(tiny(text_corpus).data)
    for c in record["candidates"]:  # each score is the candidate's bound at step 4 on the shifted windows
        cfg, params, step = load_params(tmp_path / "run" / "restarts" / f"seed{c['seed']}")
        assert step == 4
        r = evaluate(params, cfg, data.val_batches(1, shifted=True), data.val_bytes_per_token)
        assert r["bpb"] == pytest.approx(c["bpb"], rel=1e-6)
    scores = [c["bpb"] for c in record["candidates"]]
    assert len(set(scores)) == 3
    chosen = record["chosen_seed"]
    assert chosen == 5 + int(np.argmin(scores)) and result["restarts"]["chosen_seed"] == chosen
    assert record["total_steps"] == 3 * 4 + 12 - 4 and result["step"] == 12
    plain = quiet(train, tiny(text_corpus, f"train.seed={chosen}"), tmp_path / "plain")
    assert result["bpb"] == plain["bpb"]
    same_params(load_params(tmp_path / "run")[1], load_params(tmp_path / "plain")[1])
    again = quiet(train_with_restarts, tiny(text_corpus, *over), tmp_path / "run")
    assert again["bpb"] == result["bpb"] and again["restarts"] == record
    with pytest.raises(ConfigError, match="train.restarts=3"):
        train_with_restarts(tiny(text_corpus, "train.restarts=2", "train.restart_steps=4", "train.seed=5"),
                            tmp_path / "run")


@pytest.mark.parametrize("overrides, message", [
    (("train.stop_at=13",), "train.stop_at=13 must be in [0, train.steps=12]"),
    (("train.restarts=0",), "train.restarts=0 must be >= 1"),
    (("train.restarts=2",), "needs 0 < train.restart_steps < train.steps=12"),
    (("train.restarts=2", "train.restart_steps=12"), "got 12"),
    (("train.restarts=2", "train.restart_steps=4", "train.stop_at=4"), "cannot be combined"),
])
def test_bad_restart_settings_are_one_line_config_errors(overrides, message, text_corpus):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        tiny(text_corpus, *overrides)
    assert "\n" not in str(e.value)
