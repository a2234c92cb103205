"""Non-finite train steps: skipped inside the compiled step (params and optimizer state kept),
counted, and `train.max_bad_steps` in a row stop the run with the last checkpoint intact.

NaNs are injected by wrapping the objective's loss on chosen steps (a host callback counts the
step calls): either the loss is multiplied by NaN (the loss and every gradient entry are NaN), or a
term with value 0 and a NaN gradient is added (the loss stays finite, only the gradient is NaN).
"""
from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import objectives
from jaxorder.evaluation.runs import load_params
from jaxorder.training import step as step_lib
from jaxorder.training.health import TooManyBadSteps, all_finite
from jaxorder.training.loop import train
from jaxorder.training.metrics import read_metrics
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state

from conftest import TINY, step_dirs


@jax.custom_jvp
def zero_with_nan_gradient(x, bad):
    """0, with a NaN derivative where `bad` (a float flag) is 1."""
    return jnp.zeros_like(x)


@zero_with_nan_gradient.defjvp
def _zero_with_nan_gradient_jvp(primals, tangents):
    x, bad = primals
    return jnp.zeros_like(x), jnp.where(bad > 0, jnp.nan, 0.0) * tangents[0]


def poison_steps(monkeypatch, bad_calls, part: str = "loss") -> None:
    """Makes the train step non-finite on the `bad_calls`-th executions (1-based) of the step:
    `part="loss"` the loss (and so every gradient), `part="gradient"` only the gradient."""
    calls = {"n": 0}

    def is_bad(_):
        calls["n"] += 1
        return np.bool_(bad_calls(calls["n"]))

    real_of = objectives.of

    def of(cfg):
        objective = real_of(cfg)

        def loss(params, batch, rng, cfg):
            value, metrics = objective.loss(params, batch, rng, cfg)
            bad = jax.pure_callback(is_bad, jax.ShapeDtypeStruct((), jnp.bool_), batch["tokens"][0, 0])
            if part == "loss":
                value = value * jnp.where(bad, jnp.nan, 1.0)
            else:
                first_leaf = jax.tree.leaves(params)[0]
                value = value + zero_with_nan_gradient(first_leaf.sum(), bad.astype(jnp.float32))
            return value, {**metrics, "loss": value}

        return dataclasses.replace(objective, loss=loss)

    monkeypatch.setattr(step_lib, "objectives", types.SimpleNamespace(of=of))


@pytest.mark.parametrize("part", ["loss", "gradient"])
def test_a_non_finite_step_keeps_params_and_optimizer_state(monkeypatch, part):
    tiny = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.max_len=16", "data.seq_len=8"]
    cfg = config_lib.load(None, [*tiny, "data.batch_size=4", "optimizer.warmup_steps=0"])
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, 256)
    poison_steps(monkeypatch, lambda call: call == 2, part)
    step = jax.jit(step_lib.make_train_step(cfg, optimizer))

    good, metrics_good = step(state, tokens)  # call 1: finite
    assert bool(metrics_good["finite"])
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(good["params"]),
                                                        jax.tree.leaves(state["params"]))]
    assert all(changed), "a finite step must update every parameter"

    skipped, metrics_bad = step(good, tokens)  # call 2: NaN loss and gradients, or NaN gradients only
    assert not bool(metrics_bad["finite"]) and np.isnan(float(metrics_bad["grad_norm"]))
    assert np.isnan(float(metrics_bad["loss"])) == (part == "loss")
    for key in ("params", "opt_state"):
        for a, b in zip(jax.tree.leaves(skipped[key]), jax.tree.leaves(good[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(skipped["step"]) == int(good["step"]) + 1
    assert bool(all_finite(skipped["params"]))


def test_consecutive_bad_steps_stop_the_run_with_the_last_checkpoint_intact(monkeypatch, repeated_corpus,
                                                                           tmp_path):
    # Steps 3-4 are a transient burst (skipped, counted, training goes on); from step 8 on every
    # step is bad: the third in a row (step 10) stops the run before the step-10 checkpoint.
    poison_steps(monkeypatch, lambda call: call in (3, 4) or call >= 8)
    cfg = config_lib.load(None, [*TINY, "data.source=text", f"data.path={repeated_corpus}", "train.steps=20",
                                 "train.checkpoint_every=5", "train.log_every=5", "train.eval_every=100",
                                 "train.max_bad_steps=3", "train.async_checkpointing=false"])
    run = tmp_path / "run"
    with pytest.raises(TooManyBadSteps) as exc:
        train(cfg, run)
    message = str(exc.value)
    assert "\n" not in message
    assert "3 consecutive train steps (up to step 10)" in message, message
    assert "newest checkpoint (step 5) is intact" in message and "optimizer.lr" in message
    assert step_dirs(run) == [5]
    _, params, step = load_params(run)
    assert step == 5 and bool(all_finite(params))
    train_logs = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [(r["step"], r["bad_steps"]) for r in train_logs] == [(5, 2)]
    assert not (run / "eval.json").exists()
