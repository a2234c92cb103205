"""Conditional scoring of runs (jaxorder.interop.lm_scoring) and the lm-evaluation-harness model
`jaxorder` on a tiny local multiple-choice task (written here; nothing is downloaded).

The scoring tests need no extra; the harness tests need the [eval] extra (lm-eval) and are
skipped with that reason without it."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is a local JSON file
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder.data import make_data
from jaxorder.interop.lm_scoring import RunScorer
from jaxorder.objectives import ao_ar, l2r, mdm

try:
    import lm_eval  # noqa: F401
    HAVE_LM_EVAL = True
except ImportError:
    HAVE_LM_EVAL = False
needs_lm_eval = pytest.mark.skipif(not HAVE_LM_EVAL,
                                   reason="needs the [eval] extra: pip install -e '.[eval]'")


def _run(tiny_trained_run, objective: str):
    from jaxorder import config as config_lib

    run_dir = tiny_trained_run(objective)
    return run_dir, config_lib.load_saved(run_dir / "config.yaml")


@pytest.fixture(scope="module")
def l2r_run(tiny_trained_run):
    return _run(tiny_trained_run, "l2r")


def _window(cfg) -> np.ndarray:
    return np.asarray(make_data(cfg.data).val_batches(1)[0][:1])


def test_l2r_scores_are_the_chain_rule_of_the_yardstick(l2r_run):
    run_dir, cfg = l2r_run
    scorer = RunScorer(run_dir)
    window_1L = _window(cfg)
    full = scorer.loglikelihood([([], window_1L[0].tolist())])[0].logprob
    yardstick = -float(l2r.nll(scorer.params, {"tokens": jnp.asarray(window_1L)}, None, scorer.cfg)[0])
    assert abs(full - yardstick) < 1e-3
    ctx, cont = window_1L[0, :12].tolist(), window_1L[0, 12:].tolist()
    split = scorer.loglikelihood([([], ctx), (ctx, cont)])
    assert abs(split[0].logprob + split[1].logprob - full) < 1e-3  # log p(ctx) + log p(cont | ctx)


@pytest.mark.parametrize("objective", ["mdm", "ao_ar"])
def test_order_agnostic_runs_score_in_the_left_to_right_order(tiny_trained_run, objective):
    run_dir, cfg = _run(tiny_trained_run, objective)
    scorer = RunScorer(run_dir)
    assert scorer.score == "l2r"
    window_1L = jnp.asarray(_window(cfg))
    ours = scorer.loglikelihood([([], window_1L[0].tolist())])[0].logprob
    identity_1L = ao_ar.identity_orders(*window_1L.shape)
    if objective == "mdm":
        exact = -float(mdm.chain_rule_nll(scorer.params, window_1L, identity_1L, scorer.cfg)[0])
        elbo_scorer = RunScorer(run_dir, score="elbo", elbo_samples=8)
        elbo = elbo_scorer.loglikelihood([([], window_1L[0].tolist())])[0]
        assert np.isfinite(elbo.logprob) and elbo.logprob < 0
    else:
        exact = -float(ao_ar.order_nll(scorer.params, window_1L, identity_1L, scorer.cfg)[0])
    assert abs(ours - exact) < 1e-3


# ----------------------------------------------------------------------------- lm-evaluation-harness

TASK_DOCS = [
    {"question": "The cat sat on the", "choices": ["mat", "king", "river"], "answer": 0},
    {"question": "The king and the", "choices": ["queen", "of", "sword"], "answer": 0},
    {"question": "In the morning the", "choices": ["river", "castle", "people"], "answer": 2},
    {"question": "He had not", "choices": ["been", "the", "water"], "answer": 0},
]


def _write_task(directory) -> str:
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in TASK_DOCS))
    (directory / "jaxorder_tiny_mc.yaml").write_text(
        "task: jaxorder_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: '{data}'}}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n")
    return "jaxorder_tiny_mc"


def _direct_logprob(scorer: RunScorer, context: str, continuation: str) -> float:
    """log p(continuation | context) straight from l2r's per-token NLL of [context + continuation]
    (PAD after the text, which a causal model does not see: one compiled shape)."""
    ctx, cont = scorer.encode(context), scorer.encode(continuation)
    tokens_1L = np.full((1, scorer.window), scorer.ids.pad, np.int32)
    tokens_1L[0, :len(ctx + cont)] = ctx + cont
    nll_1L = _token_nll(scorer.params, jnp.asarray(tokens_1L), scorer.cfg)
    return -float(nll_1L[0, len(ctx):len(ctx + cont)].sum())


_token_nll = jax.jit(l2r.sequence_token_nll, static_argnums=2)


@needs_lm_eval
def test_lm_eval_multiple_choice_picks_the_directly_scored_answers(l2r_run, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from jaxorder.interop.lm_eval_model import JaxorderLM

    run_dir, _ = l2r_run
    task = _write_task(tmp_path)
    lm = JaxorderLM(run_dir=str(run_dir))
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)  # skips indexing ~1k tasks
    out = simple_evaluate(model=lm, tasks=[task], task_manager=tasks, log_samples=True, bootstrap_iters=0)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    assert len(samples) == len(TASK_DOCS)
    correct = 0
    for sample, doc in zip(samples, TASK_DOCS):
        harness_C = np.array([float(r[0]) for r in sample["filtered_resps"]])
        direct_C = np.array([_direct_logprob(lm.scorer, doc["question"], " " + c) for c in doc["choices"]])
        np.testing.assert_allclose(harness_C, direct_C, atol=1e-3)
        assert int(harness_C.argmax()) == int(direct_C.argmax())
        correct += int(direct_C.argmax()) == doc["answer"]
    assert out["results"][task]["acc,none"] == pytest.approx(correct / len(TASK_DOCS))


@needs_lm_eval
def test_lm_eval_generate_until_is_the_greedy_sampler_cut_at_the_stop(l2r_run):
    from jaxorder import sampling
    from jaxorder.interop.lm_eval_model import JaxorderLM

    run_dir, _ = l2r_run
    lm = JaxorderLM(run_dir=str(run_dir))

    class Request:  # what the harness hands over: .args = (context, generation kwargs)
        args = ("The king", {"until": ["."], "max_gen_toks": 24})

    text, = lm.generate_until([Request()])
    prompt = lm.scorer.encode("The king")
    row = np.asarray([prompt + [lm.scorer.ids.mask] * 24], np.int32)
    out = jax.device_get(sampling.sample(lm.scorer.params, lm.scorer.cfg, row, jax.random.key(0), "ar",
                                         sampling.SamplerOptions(temperature=0.0)))
    greedy = lm.scorer.tokenizer.decode(np.asarray(out["tokens"][0])[len(prompt):])
    assert text == greedy.split(".")[0] and "." not in text


def test_lm_eval_model_without_the_extra_names_it(monkeypatch):
    import builtins
    import importlib
    import sys

    from jaxorder.interop.extras import MissingExtra

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    for name in [m for m in sys.modules if m.startswith("lm_eval") or m == "jaxorder.interop.lm_eval_model"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingExtra, match=r"install the \[eval\] extra: pip install -e '\.\[eval\]'"):
        importlib.import_module("jaxorder.interop.lm_eval_model")
