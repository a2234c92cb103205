"""Any-order sampling in a named order (the `order` option: the `perm` sampler, and the any-order
`speculative` sampler; jaxorder.sampling.given_order): the order is followed exactly, it reproduces the
default sampler when given the order that one draws, l2r at temperature 0 is the scored chain rule's
argmax, and every bad spec is a one-line error with exit status 2 through the CLI."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, orders, sampling
from jaxorder.objectives import ao_ar

from conftest import cli_in_process, spec

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")
L = 16
MASK = 257  # byte vocabulary: PAD 256, MASK 257, BOS 258, EOS 259
BANNED = [256, 257, 258]
SPEC = "perm:9,3,15,0-2,14-10,4-"  # 9, 3, 15, 0, 1, 2, 14, 13, 12, 11, 10, 4, 5, 6, 7, 8


def _rows(fixed: list[dict[int, int]]) -> np.ndarray:
    rows = np.full((len(fixed), L), MASK, np.int32)
    for r, f in enumerate(fixed):
        rows[r, list(f)] = list(f.values())
    return rows


# nothing fixed; a prefix; an infilling template (different numbers of given positions per row)
ROWS = _rows([{}, dict(zip(range(5), (1, 2, 3, 4, 5))), {0: 20, 1: 21, 2: 22, 6: 23, 7: 24, 8: 25, 15: 26}])


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, ("objective.name=ao_ar", *TINY))
    return cfg, model.init_params(cfg.model, jax.random.key(0), target_positions=True)


def _get(out: dict) -> dict:
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def _expected(rows: np.ndarray, order_BL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order [B, L]: given positions ascending, then the open ones as order_BL lists them;
    committed_at [B, L]: each open position's index among the open ones, -1 for given ones), by hand."""
    full, committed = [], np.full(rows.shape, -1, np.int32)
    for r, row in enumerate(rows):
        open_ = [int(p) for p in order_BL[r] if row[p] == MASK]
        full.append([p for p in range(L) if row[p] != MASK] + open_)
        for step, p in enumerate(open_):
            committed[r, p] = step
    return np.asarray(full), committed


def _write_orders(path, order_BL: np.ndarray) -> str:
    path.write_text("".join("perm:" + ",".join(map(str, row)) + "\n" for row in order_BL))
    return f"perm@{path}"


@pytest.mark.parametrize("sampler,cache", [("perm", True), ("perm", False), ("speculative", True)])
@pytest.mark.parametrize("source", ["spec", "file"])
def test_positions_are_generated_in_exactly_the_named_order(tiny, tmp_path, sampler, cache, source):
    """committed_at and order follow the spec (one for every row) or the file (one line per row); catches
    a rank/order mix-up (the orders here are no involutions), given positions not skipped, a per-row
    line applied to the wrong row."""
    cfg, params = tiny
    if source == "spec":
        text, order_BL = SPEC, np.tile(orders.resolve(orders.parse(SPEC), L), (3, 1))
    else:
        order_BL = np.stack([np.random.default_rng(r).permutation(L) for r in range(3)])
        text = _write_orders(tmp_path / "orders.txt", order_BL)
    options = {"cache": cache} if sampler == "perm" else {"draft_length": 3}
    out = _get(sampling.sample(params, cfg, ROWS, jax.random.key(1), *spec(sampler, order=text, **options)))
    want_order, want_committed = _expected(ROWS, order_BL)
    np.testing.assert_array_equal(out["order"], want_order)
    np.testing.assert_array_equal(out["committed_at"], want_committed)
    assert np.array_equal(out["tokens"][ROWS != MASK], ROWS[ROWS != MASK])
    assert not np.isin(out["tokens"], BANNED).any()


@pytest.mark.parametrize("default,named", [("random", "perm"), ("speculative", "speculative")])
def test_named_order_equal_to_the_drawn_one_gives_the_default_samplers_result(tiny, tmp_path, default, named):
    """At temperature 1 with the same key: the same tokens, logprob and order as the sampler that draws a
    random order, when told that order (noise keys and the order slot by slot must line up)."""
    cfg, params = tiny
    key = jax.random.key(4)
    a = _get(sampling.sample(params, cfg, ROWS, key, *spec(default)))
    text = _write_orders(tmp_path / "drawn.txt", a["order"])
    b = _get(sampling.sample(params, cfg, ROWS, key, *spec(named, order=text)))
    for k in ("tokens", "order", "committed_at"):
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    np.testing.assert_allclose(b["logprob"], a["logprob"], rtol=1e-6)
    d = _get(sampling.sample(params, cfg, ROWS, key, *spec(named, order="random")))  # the default's draw
    assert all(np.array_equal(d[k], a[k]) for k in ("tokens", "order"))
    # and a different order changes the tokens: the given order is really used
    c = _get(sampling.sample(params, cfg, ROWS, key, *spec(named, order="r2l")))
    assert not np.array_equal(c["tokens"], a["tokens"])


@pytest.mark.parametrize("text", ["l2r", SPEC])
def test_temperature_zero_is_the_argmax_of_the_scored_conditionals(tiny, text):
    """Every generated token is the argmax (PAD/MASK/BOS excluded) of ao_ar's one-pass conditional of its
    slot in the returned order, and logprob is the scored chain rule over the generated slots (the
    whole order NLL for the free row, what `score --order` reports); l2r equals the l2r sampler."""
    cfg, params = tiny
    out = _get(sampling.sample(params, cfg, ROWS, jax.random.key(2),
                               *spec("perm", order=text, temperature=0.0, ignore_eos=True)))
    tokens, order = jnp.asarray(out["tokens"]), jnp.asarray(out["order"])
    logits_BLV, _ = ao_ar.order_logits(params, tokens, order, cfg)
    logits_BLV = np.where(np.isin(np.arange(logits_BLV.shape[-1]), BANNED), -np.inf, np.asarray(logits_BLV))
    generated_BL = np.arange(L)[None, :] >= (ROWS != MASK).sum(axis=1, keepdims=True)  # slots
    in_slot_order = np.take_along_axis(out["tokens"], out["order"], axis=1)
    assert np.array_equal(in_slot_order[generated_BL], logits_BLV.argmax(-1)[generated_BL])
    token_nll = np.asarray(ao_ar.order_token_nll(params, tokens, order, cfg))
    np.testing.assert_allclose(out["logprob"], -(token_nll * generated_BL).sum(axis=1), atol=1e-4)
    np.testing.assert_allclose(out["logprob"][0], -float(ao_ar.order_nll(params, tokens, order, cfg)[0]),
                               atol=1e-4)
    if text == "l2r":
        ref = _get(sampling.sample(params, cfg, ROWS, jax.random.key(2),
                                   *spec("l2r", temperature=0.0, ignore_eos=True)))
        np.testing.assert_array_equal(out["tokens"], ref["tokens"])


def _one_line_error(argv: list) -> str:
    code, _, err = cli_in_process(argv)
    assert code == 2, err
    assert err.strip() and "\n" not in err.strip() and "Traceback" not in err, err
    return err


def test_cli_named_order_and_every_malformed_spec(tiny_trained_run, tmp_path):
    run = tiny_trained_run("ao_ar")
    base = ["sample", run, "--length", "8", "--num-samples", "2", "--seed", "1", "--json"]
    code, out, err = cli_in_process([*base, "--sampler", "perm", "--order", "perm:7-4,0-"])
    assert code == 0, err
    for s in json.loads(out)["samples"]:
        assert s["order"] == [7, 6, 5, 4, 0, 1, 2, 3] and s["committed_at"] == [4, 5, 6, 7, 3, 2, 1, 0]
    code, out, err = cli_in_process([*base, "--sampler", "speculative", "--order", "r2l"])
    assert code == 0 and json.loads(out)["samples"][0]["order"] == list(range(7, -1, -1)), err
    three = tmp_path / "three.txt"
    three.write_text("0-\n7-0\n1,0,2-\n")
    short = tmp_path / "short.txt"
    short.write_text("0-\n0-6\n")
    cases = {
        "perm:0,1,1,2-": "index 1 appears twice",
        "perm:0-6": "index 7 is missing for a window of 8 tokens",
        "perm:0-8": "index 8 is out of range for a window of 8 tokens",
        "perm:9,0-": "index 9 is out of range",
        "perm:0,x": "bad token 'x'",
        "perm:2-,0": "the open range '2-' must come last",
        "perm:": "is empty",
        "diagonal": "unknown order 'diagonal'",
        f"perm@{three}": "has 3 permutations for 2 rows",
        f"perm@{short}": "line 2: index 7 is missing",
        f"perm@{tmp_path}/absent.txt": "cannot be read",
    }
    for text, message in cases.items():
        for sampler in ("perm", "speculative"):
            assert message in _one_line_error([*base, "--sampler", sampler, "--order", text]), (sampler, text)
    assert "the perm sampler needs --order" in _one_line_error([*base, "--sampler", "perm"])
    assert "the l2r sampler does not take 'order'" in _one_line_error([*base, "--sampler", "l2r", "--order",
                                                                        "r2l"])
    # naming only the open positions of a prompted row: the hint says to list the given ones too
    err = _one_line_error(["sample", run, "--prompt", "ab", "--length", "8", "--sampler", "perm",
                           "--order", "perm:7-2"])
    assert "index 0 is missing (and 1 more)" in err and "the 2 given ones too" in err
