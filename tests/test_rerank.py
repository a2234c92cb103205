"""`jaxorder rerank` (jaxorder/evaluation/rerank.py) on tiny runs: with scorer = judge the pick is the
judge's best, an r2l scorer's value is -log p(prompt | continuation), one-line errors."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder.evaluation.rerank import rerank
from jaxorder.evaluation.runs import load_params
from jaxorder.objectives import r2l

from conftest import cli_in_process

PROMPTS = ["the king", "a queen and"]


def test_scorer_equal_to_judge_picks_the_judges_best(tiny_trained_run, tmp_path):
    """Same l2r run as generator, scorer and judge: the full-sequence NLL ranks candidates like the
    judge's conditional NLL (the prompt term is shared), so the two picks agree; the generator's own
    log-probability (temperature 1) is minus the judge's nats (catches a misaligned judge slice)."""
    run = tiny_trained_run("l2r")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    code, out, err = cli_in_process(["rerank", "--generator", run, "--scorer", run, "--prompts",
                                     tmp_path / "prompts.txt", "-n", "6", "--max-new-tokens", "8",
                                     "--seed", "3"])
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    records, summary = lines[:-1], lines[-1]["summary"]
    assert len(records) == 2 and summary["prompts"] == 2 and summary["judge"] == str(run)
    for r in records:
        bpb = [c["judge_bpb"] for c in r["candidates"]]
        # equal bytes, so bits/byte ranks like nats
        assert all(c["bytes"] == 8 for c in r["candidates"])
        assert len(set(np.round(bpb, 6))) > 1  # the candidates differ, so the agreement is not vacuous
        assert r["scorer_top1"]["index"] == r["judge_best"]["index"] == int(np.argmin(bpb))
        assert r["judge_best"]["judge_bpb"] == min(bpb)
        for c in r["candidates"]:
            assert -c["generator_logprob"] == pytest.approx(c["judge_bpb"] * np.log(2) * 8, rel=1e-4)
    best = [r["judge_best"]["judge_bpb"] for r in records]
    assert summary["scorer_top1"]["mean"] == pytest.approx(np.mean(best))
    assert summary["judge_best"]["mean"] <= summary["all_candidates"]["mean"]


def test_r2l_scorer_value_is_the_prompt_given_the_continuation(tiny_trained_run):
    """Under r2l, -log p(x | y) = r2l NLL(x + y) - r2l NLL(y): y's tokens are read first, from BOS."""
    gen, scorer = tiny_trained_run("l2r"), tiny_trained_run("r2l")
    records, summary = rerank(gen, scorer, PROMPTS[:1], n=3, max_new_tokens=6)
    cfg, params, _ = load_params(scorer)
    prompt = np.frombuffer(PROMPTS[0].encode(), np.uint8).astype(np.int32)
    for c in records[0]["candidates"]:
        y = np.asarray(c["tokens"], np.int32)
        xy = jnp.asarray(np.concatenate([prompt, y])[None])
        both = float(r2l.nll(params, {"tokens": xy}, None, cfg)[0])
        alone = float(r2l.nll(params, {"tokens": jnp.asarray(y[None])}, None, cfg)[0])
        assert c["scorer_nats"] == pytest.approx(both - alone, abs=1e-3)
    assert summary["scorer"] == str(scorer)


@pytest.mark.parametrize("which, expected", [("judge", "the judge must be an l2r run"),
                                             ("generator", "generates right to left")])
def test_bad_runs_are_one_line_errors(which, expected, tiny_trained_run, tmp_path):
    (tmp_path / "p.txt").write_text("the\n")
    l2r_run, r2l_run = tiny_trained_run("l2r"), tiny_trained_run("r2l")
    argv = ["rerank", "--generator", r2l_run if which == "generator" else l2r_run, "--scorer", l2r_run,
            "--prompts", tmp_path / "p.txt", "-n", "2", "--max-new-tokens", "4"]
    if which == "judge":
        argv += ["--judge", r2l_run]
    code, out, err = cli_in_process(argv)
    assert code == 2 and out == "" and expected in err and err.count("\n") == 1
