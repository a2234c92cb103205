"""Explicit orders `perm:...` and `perm@FILE` (jaxorder/orders.py): syntax, round
trip, every malformed case, and their use in fixed-order scoring (`eval --orders`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import orders as perm_orders
from jaxorder.config import ConfigError
from jaxorder.evaluation.fixed_orders import order_matrix, parse_orders, score_orders
from jaxorder.objectives import ao_ar
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state


def resolve(text: str, n: int) -> list[int]:
    return perm_orders.resolve(perm_orders.parse(text), n).tolist()


@pytest.mark.parametrize("text, n, expected", [
    ("perm:5,1,2,3,4,0,6-", 9, [5, 1, 2, 3, 4, 0, 6, 7, 8]),
    ("perm:2,0-", 4, [2, 0, 1, 3]),  # the open range skips indices listed before it
    ("perm:3-0", 4, [3, 2, 1, 0]),  # a descending range
    ("perm:1-2,0,3", 4, [1, 2, 0, 3]),
    ("perm:0,1,2-", 2, [0, 1]),  # k = n: the open range is empty
])
def test_resolve(text, n, expected):
    assert resolve(text, n) == expected


@pytest.mark.parametrize("text, n", [("perm:5,1,2,3,4,0,6-", 9), ("perm:3-0", 4), ("perm:0", 1),
                                     ("perm:0-3,9-5,4,10-", 12)])
def test_round_trip(text, n):
    """parse -> canonical text -> parse gives the same spec; a resolved order's canonical text too."""
    perm = perm_orders.parse(text)
    assert perm_orders.parse(perm.text) == perm and perm.text == text
    assert parse_orders(perm.text)[0].label == text
    order = perm_orders.resolve(perm, n)
    again = perm_orders.resolve(perm_orders.parse(perm_orders.canonical(order)), len(order))
    np.testing.assert_array_equal(again, order)


def test_eval_orders_list_with_a_perm_in_the_middle():
    specs = parse_orders("l2r,perm:5,1,2,3,4,0,6-,r2l")
    assert [s.label for s in specs] == ["l2r", "perm:5,1,2,3,4,0,6-", "r2l"]
    assert [s.label for s in parse_orders(",".join(s.label for s in specs))] == [s.label for s in specs]


@pytest.mark.parametrize("text, n, message", [
    ("perm:1,1,0-", 3, "index 1 appears twice"),
    ("perm:0-2,1", 3, "index 1 appears twice"),
    ("perm:0,2", 3, "index 1 is missing"),
    ("perm:0,1", 4, "index 2 is missing \\(and 1 more\\) for a window of 4"),
    ("perm:9,0-", 3, "index 9 is out of range for a window of 3 tokens"),
    ("perm:0,5-", 3, "index 5 is out of range"),
    ("perm:0,2a", 3, "bad token '2a'"),
    ("perm:x", 3, "bad token 'x'"),
    ("perm:", 3, "is empty"),
    ("perm:1-,0", 3, "open range '1-' must come last"),
    ("l2r,4", 3, "bare index"),
])
def test_malformed_specs_are_one_line_config_errors(text, n, message):
    with pytest.raises(ConfigError, match=message) as info:
        for spec in parse_orders(text):
            if spec.kind == "perm":
                order_matrix(spec, 1, n, jax.random.key(0))
    assert "\n" not in str(info.value)


def test_perm_file(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("perm:2,1,0\n\n")
    spec = parse_orders(f"perm@{one}")[0]
    assert spec.label == f"perm@{one}"
    np.testing.assert_array_equal(order_matrix(spec, 2, 3, jax.random.key(0)), [[2, 1, 0], [2, 1, 0]])
    per_window = tmp_path / "per_window.txt"
    per_window.write_text("0-\n2-0\n1,0,2\n")
    spec = parse_orders(f"perm@{per_window}")[0]
    # windows 1 and 2 of 3, as the second batch of a split
    np.testing.assert_array_equal(order_matrix(spec, 2, 3, jax.random.key(0), first_window=1, windows=3),
                                  [[2, 1, 0], [1, 0, 2]])
    with pytest.raises(ConfigError, match="3 permutations for 4 windows"):
        order_matrix(spec, 4, 3, jax.random.key(0))
    with pytest.raises(ConfigError, match="line 3: index 2 is missing"):
        (tmp_path / "bad.txt").write_text("0-\n0-\n1,0\n")
        order_matrix(parse_orders(f"perm@{tmp_path / 'bad.txt'}")[0], 3, 3, jax.random.key(0))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_orders(f"perm@{tmp_path / 'empty.txt'}")
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_orders(f"perm@{tmp_path / 'missing.txt'}")


def test_perm_scores_equal_the_orders_they_spell(tmp_path):
    """A perm spelling r2l scores as r2l; per-window perms score each window in its own order."""
    cfg = config_lib.load(None, ["model.d_model=16", "model.n_layers=1", "model.n_heads=2",
                                 "model.max_len=16", "data.seq_len=8", "objective.name=ao_ar"])
    params = init_state(cfg, make_optimizer(cfg))["params"]
    batches = [np.asarray(jax.random.randint(jax.random.key(i), (2, 8), 0, 256)) for i in range(2)]
    scores = score_orders(params, cfg, batches, 1.0, parse_orders("r2l,perm:7-0,perm:3,1,0,2,4-"))
    assert scores["perm:7-0"]["bpb"] == pytest.approx(scores["r2l"]["bpb"], rel=1e-6)
    assert abs(scores["perm:3,1,0,2,4-"]["bpb"] - scores["r2l"]["bpb"]) > 1e-4
    rows = [[3, 1, 0, 2, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 6, 7],
            [1, 0, 2, 3, 4, 5, 6, 7]]
    path = tmp_path / "orders.txt"
    with open(path, "w") as f:
        f.write("\n".join(",".join(map(str, r)) for r in rows))
    got = score_orders(params, cfg, batches, 1.0, parse_orders(f"perm@{path}"))[f"perm@{path}"]
    tokens = jnp.asarray(np.concatenate(batches))
    want = np.asarray(ao_ar.order_nll(params, tokens, jnp.asarray(rows, jnp.int32), cfg)) / 8
    assert got["bpb"] == pytest.approx(float(want.mean() / np.log(2)), rel=1e-5)


def test_comma_lists_group_a_perms_indices():
    """The split behind eval --orders and objective.candidate_orders: digit tokens after perm: belong to
    it, a blank item ends it (so a stray index after it stays a bare index)."""
    assert perm_orders.split_list("l2r, perm:3,1,0,2-,r2l,perm:1-0,2-") == [
        "l2r", "perm:3,1,0,2-", "r2l", "perm:1-0,2-"]
    assert perm_orders.split_list("perm:1,,2,") == ["perm:1", "2"]
    np.testing.assert_array_equal(perm_orders.named_or_perm("r2l", 3, "x"), [2, 1, 0])
    with pytest.raises(ConfigError, match="x: unknown order 'perm@f'"):
        perm_orders.named_or_perm("perm@f", 3, "x")
