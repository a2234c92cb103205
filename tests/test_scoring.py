"""`jaxorder score` (jaxorder/evaluation/scoring.py): against `eval` on the same windows, against a
brute-force chain rule, strided windows, explicit orders, bad input and exit status."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.data import make_data
from jaxorder.evaluation.runs import eval_run, load_params
from jaxorder.evaluation.scoring import plan_windows
from jaxorder.objectives import ao_ar, l2r, mdm
from jaxorder.objectives.common import special_ids

from conftest import cli_in_process


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def brute_force_l2r(params, cfg, ids: np.ndarray, i: int) -> float:
    """-log p(x_i | BOS, x_<i): one model call on the prefix alone, the last slot's prediction."""
    inputs = jnp.asarray(np.concatenate([[special_ids(cfg.model).bos], ids[:i]])[None].astype(np.int32))
    logits = model.apply(params, cfg.model, inputs, jnp.arange(i + 1)[None], "causal")[0, -1]
    return float(jax.nn.logsumexp(logits) - logits[int(ids[i])])


def test_l2r_score_equals_eval_on_the_validation_windows(tiny_trained_run, tmp_path):
    """The validation windows written as JSON lines score to eval's nll_per_token; per-token NLLs
    sum to nats and match the brute-force chain rule (catches a shifted target or a dropped first
    token)."""
    run = tiny_trained_run("l2r")
    cfg, params, _ = load_params(run)
    windows = np.concatenate(make_data(cfg.data).val_batches(cfg.eval.batches))
    assert (windows < 256).all()  # plain bytes, so the windows can be written as text
    path = tmp_path / "windows.jsonl"
    path.write_text("".join(json.dumps({"text": bytes(w.astype(np.uint8)).decode()}) + "\n" for w in windows))
    code, out, _ = cli_in_process(["score", run, path, "--per-token"])
    assert code == 0
    scored = records(out)
    assert [r["tokens"] for r in scored] == [windows.shape[1]] * len(windows)
    for r in scored:
        assert sum(r["per_token"]) == pytest.approx(r["nats"], rel=1e-6)
        assert r["yardstick"] == "exact" and r["order"] == "l2r"
        assert r["bpb"] == pytest.approx(r["nats"] / (np.log(2) * r["bytes"]), rel=1e-9)
    per_token = np.mean([r["nats"] for r in scored]) / windows.shape[1]
    assert per_token == pytest.approx(eval_run(run)["nll_per_token"], abs=1e-5)
    first = np.asarray(scored[0]["per_token"])
    for i in (0, 1, 17, windows.shape[1] - 1):
        assert first[i] == pytest.approx(brute_force_l2r(params, cfg, windows[0], i), abs=1e-4)


@pytest.mark.parametrize("n, window, stride, direction", [
    (40, 16, 8, "l2r"), (40, 16, 8, "r2l"), (33, 16, 5, "l2r"), (16, 16, 8, "l2r"), (40, 16, 8, None)])
def test_window_plan_scores_every_token_once(n, window, stride, direction):
    plan = plan_windows(n, window, stride, direction)
    counts = np.zeros(n, int)
    for w in plan:
        assert 0 <= w.start < w.end <= n and w.end - w.start <= window
        counts[w.start + w.keep_from:w.start + w.keep_to] += 1
        if direction == "l2r" and w.start > 0:  # context on the left, as much as the window leaves
            assert w.keep_from >= window - stride and w.keep_to == w.end - w.start
        if direction == "r2l" and w.end < n:  # mirrored: context on the right
            assert w.keep_from == 0 and (w.end - w.start) - w.keep_to >= window - stride
    assert (counts == 1).all()


@pytest.mark.parametrize("objective", ["l2r", "r2l"])
def test_long_line_is_scored_in_strided_windows(objective, tiny_trained_run, tmp_path):
    """A 40-token line with --window 16 --stride 8: each token's NLL is the one it gets in its window
    (context = the window's other tokens in the reading direction)."""
    run = tiny_trained_run(objective)
    cfg, params, _ = load_params(run)
    text = "the king and the queen rode to the river"
    assert len(text) == 40
    (tmp_path / "in.txt").write_text(text + "\n")
    code, out, _ = cli_in_process(["score", run, tmp_path / "in.txt", "--per-token", "--window", "16",
                                   "--stride", "8"])
    assert code == 0
    (r,) = records(out)
    assert "strided windows" in r["note"] and r["tokens"] == 40
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int32)
    for start, end, i in ((0, 16, 3), (8, 24, 20), (24, 40, 39), (16, 32, 25)):
        if objective == "l2r":
            want = l2r.sequence_token_nll(params, jnp.asarray(ids[None, start:end]), cfg)[0, i - start]
        else:  # mirrored windows ([0, 16) is the last one); the l2r chain rule of the reversed window
            start, end, i = 40 - end, 40 - start, 39 - i
            reversed_window = jnp.asarray(ids[None, start:end][:, ::-1].copy())
            want = l2r.sequence_token_nll(params, reversed_window, cfg)[0, end - 1 - i]
        assert r["per_token"][i] == pytest.approx(float(want), abs=1e-4)
    assert sum(r["per_token"]) == pytest.approx(r["nats"], rel=1e-6)


def test_mdm_bound_and_exact_orders(tiny_trained_run, tmp_path):
    """mdm: the yardstick is a bound without an order; --order perm gives the exact chain rule in that
    order, per token in position order."""
    run = tiny_trained_run("mdm")
    cfg, params, _ = load_params(run)
    text = "the cat sat"
    (tmp_path / "in.txt").write_text(text + "\n")
    code, out, _ = cli_in_process(["score", run, tmp_path / "in.txt"])
    assert code == 0 and records(out)[0]["yardstick"] == "bound" and records(out)[0]["order"] is None
    code, out, _ = cli_in_process(["score", run, tmp_path / "in.txt", "--order", "perm:10-6,0-",
                                   "--per-token"])
    (r,) = records(out)
    order = [10, 9, 8, 7, 6, 0, 1, 2, 3, 4, 5]
    ids = jnp.asarray(np.frombuffer(text.encode(), np.uint8).astype(np.int32)[None])
    want = np.asarray(mdm.chain_rule_token_nll(params, ids, jnp.asarray([order]), cfg))[0]
    np.testing.assert_allclose(r["per_token"], want, atol=1e-4)
    assert r["nats"] == pytest.approx(float(mdm.chain_rule_nll(params, ids, jnp.asarray([order]), cfg)[0]),
                                      abs=1e-4)
    assert r["yardstick"] == "exact" and r["order"] == "perm:10-6,0-5"


def test_any_order_terms_in_position_order():
    """ao_ar's per-position terms: entry order[j] is slot j's term, and they sum to order_nll."""
    cfg = config_lib.load(None, ["model.d_model=16", "model.n_layers=1", "model.n_heads=2",
                                 "model.max_len=16", "data.seq_len=8", "objective.name=ao_ar"])
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=True)
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 256)
    orders = jnp.asarray([[3, 1, 0, 2, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5, 6, 7]], jnp.int32)
    slots = np.asarray(ao_ar.order_token_nll(params, tokens, orders, cfg))
    positions = np.asarray(ao_ar.position_token_nll(params, tokens, orders, cfg))
    for b in range(2):
        np.testing.assert_allclose(positions[b, np.asarray(orders[b])], slots[b], rtol=1e-6)
    np.testing.assert_allclose(positions.sum(1), np.asarray(ao_ar.order_nll(params, tokens, orders, cfg)),
                               rtol=1e-5)


def test_bad_lines_get_error_records_and_the_rest_is_scored(tiny_trained_run, tmp_path):
    run = tiny_trained_run("l2r")
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "the cat"}\n\xff\xfe\n\nnot json\n{"txt": "x"}\n'
                                        b'{"text": ""}\n{"text": "a\\nb"}\n')
    code, out, err = cli_in_process(["score", run, tmp_path / "in.jsonl"])
    assert code == 0 and err == ""
    got = records(out)
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5, 6, 7]
    assert "bpb" in got[0] and "bpb" in got[6] and got[6]["tokens"] == 3
    assert "not UTF-8" in got[1]["error"] and "empty" in got[2]["error"]
    assert "not JSON" in got[3]["error"] and "'text'" in got[4]["error"] and "empty" in got[5]["error"]


@pytest.mark.parametrize("argv, expected", [
    (["--order", "l2r"], "fixed-order scoring needs a run of"),
    (["--order", "l2r,r2l"], "--order takes one order"),
    (["--window", "0"], "--window must be in"),
    (["--stride", "0"], "--stride must be in"),
    (["MISSING"], "cannot read"),
])
def test_bad_options_are_one_line_errors(argv, expected, tiny_trained_run, tmp_path):
    run = tiny_trained_run("l2r")
    (tmp_path / "in.txt").write_text("the cat\n")
    args = ["score", run, *(argv if argv == ["MISSING"] else [tmp_path / "in.txt", *argv])]
    args = [str(tmp_path / "missing.txt") if a == "MISSING" else a for a in args]
    code, out, err = cli_in_process(args)
    assert code == 2 and out == "" and expected in err and err.count("\n") == 1


def test_nothing_scorable_exits_2(tiny_trained_run, tmp_path):
    run = tiny_trained_run("mdm")
    (tmp_path / "in.txt").write_bytes(b"\n\xff\n")
    code, out, err = cli_in_process(["score", run, tmp_path / "in.txt"])
    assert code == 2 and len(records(out)) == 2 and "no input line" in err
    code, _, err = cli_in_process(["score", run, tmp_path / "in.txt", "--per-token"])
    assert code == 2 and "--per-token" in err
    (tmp_path / "ok.txt").write_text("ab\nabcdef\n")
    code, out, _ = cli_in_process(["score", run, tmp_path / "ok.txt", "--order", "perm:1,0,2-"])
    got = records(out)  # the perm fits line 2 (6 tokens) but not line 1 (2 tokens: index 2- is fine)
    assert code == 0 and got[0]["order"] == "perm:1-0" and got[1]["order"] == "perm:1-0,2-5"
    code, out, _ = cli_in_process(["score", run, tmp_path / "ok.txt", "--order", "perm:0,5,1-4"])
    got = records(out)
    assert code == 0 and "out of range for a window of 2" in got[0]["error"] and "bpb" in got[1]
