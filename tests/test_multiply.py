"""data.source=multiply (lines a*b=c) and data.max_train_tokens (a fixed unique-token budget)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError, DataConfig
from jaxorder.data import load_documents, make_data
from jaxorder.data.errors import DataError
from jaxorder.data.multiply import (
    format_line,
    is_correct_product,
    multiply_documents,
    parse_line,
    product_accuracy,
    sample_pairs,
)


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"source": "multiply", "synthetic_tokens": 20_000, "seq_len": 32, "batch_size": 4,
                         **kw})


def _lines(cfg: DataConfig) -> list[str]:
    return [line for d in multiply_documents(cfg) for line in d.text.split("\n")]


@pytest.mark.parametrize("digits,tokens", [(1, 500), (3, 2_000), (5, 2_000)])
def test_every_line_is_a_correct_product_of_d_digit_factors(digits, tokens):
    # catches a wrong product, leading zeros, factors of the wrong width, a stray trailing newline
    lines = _lines(_cfg(multiply_digits=digits, synthetic_tokens=tokens))
    assert lines and all(line for line in lines)
    for line in lines:
        a, rest = line.split("*")
        b, c = rest.split("=")
        assert len(a) == len(b) == digits and a[0] != "0" and b[0] != "0" and c[0] != "0"
        assert int(a) * int(b) == int(c)
        assert is_correct_product(line, reverse=False)


def test_reverse_variant_writes_each_number_digit_reversed():
    # catches reversing the whole line (which would also move the '*' and '=') or forgetting c
    plain, rev = _lines(_cfg()), _lines(_cfg(multiply_reverse=True))
    assert len(plain) == len(rev)
    for p, r in zip(plain, rev):
        ap, bp, cp = p.replace("=", "*").split("*")
        ar, br, cr = r.replace("=", "*").split("*")
        assert (ar, br, cr) == (ap[::-1], bp[::-1], cp[::-1])
        assert is_correct_product(r, reverse=True)
    assert format_line(123, 45, True) == "321*54=5355" and format_line(123, 45, False) == "123*45=5535"


def test_parse_line_rejects_malformed_and_wrong_lines():
    assert parse_line("12*34=408", False) == (12, 34, 408)
    assert parse_line("21*43=804", True) == (12, 34, 408)
    assert not is_correct_product("12*34=409", False)
    for bad in ("12*34", "12=408", "1a*34=408", "012*34=408", "", "12*34=408=1", "-1*3=-3"):
        assert parse_line(bad, False) is None, bad
    assert parse_line("21*43=8040", True) is None  # reversed '0408' has a leading zero


def test_seed_reproduces_and_changes_data():
    assert _lines(_cfg(seed=3)) == _lines(_cfg(seed=3))
    assert _lines(_cfg(seed=3)) != _lines(_cfg(seed=4))


def test_pairs_are_distinct_and_uniform_over_the_digit_range():
    pairs = sample_pairs(81, 1, seed=0)  # all 9 x 9 one-digit pairs, each exactly once
    assert len({tuple(p) for p in pairs}) == 81 and pairs.min() == 1 and pairs.max() == 9
    with pytest.raises(DataError, match="synthetic_tokens"):
        sample_pairs(82, 1, seed=0)
    big = sample_pairs(20_000, 3, seed=1)
    assert big.min() >= 100 and big.max() <= 999 and len({tuple(p) for p in big}) == len(big)
    # uniform factors: a chi-square test of the leading digit of a (9 equally likely values)
    counts = np.bincount(big[:, 0] // 100, minlength=10)[1:]
    chi2 = ((counts - len(big) / 9) ** 2 / (len(big) / 9)).sum()
    assert chi2 < 26.1  # p = 0.001 at 8 degrees of freedom


def test_validation_pairs_are_disjoint_from_training_pairs():
    train, val = load_documents(_cfg(multiply_digits=2, synthetic_tokens=30_000))
    pairs = [{line.split("=")[0] for d in docs for line in d.text.split("\n")} for docs in (train, val)]
    assert pairs[0] and pairs[1] and not pairs[0] & pairs[1]


def test_bad_options_are_one_line_config_errors():
    for overrides, needle in ((["data.multiply_digits=0"], "multiply_digits"),
                              (["data.multiply_digits=10"], "multiply_digits"),
                              (["data.max_train_tokens=-1"], "max_train_tokens"),
                              (["data.source=prepared", "data.path=x", "data.max_train_tokens=5"],
                               "max_train_tokens")):
        with pytest.raises(ConfigError, match=needle) as e:
            config_lib.load(None, ["data.source=multiply", *overrides])
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="synthetic_tokens"):
        multiply_documents(_cfg(synthetic_tokens=10))


def test_max_train_tokens_keeps_the_first_tokens_and_not_validation():
    # catches cutting the validation stream too, or cutting after (not before) windows are made
    full = make_data(_cfg())
    cut = make_data(_cfg(max_train_tokens=200))
    assert cut.info["unique_train_tokens"] == 192 == cut.train_windows.size  # 6 windows of 32
    np.testing.assert_array_equal(cut.train_windows, full.train_windows[:6])
    np.testing.assert_array_equal(cut.val_windows, full.val_windows)
    assert full.info["unique_train_tokens"] == full.train_windows.size
    with pytest.raises(DataError, match="fewer than one batch"):
        make_data(_cfg(max_train_tokens=100))  # 3 windows < batch of 4


def test_product_accuracy_counts_only_complete_lines():
    texts = ["3*45=135\n12*34=408\n12*34=409\n99*9", "7*8=56"]
    r = product_accuracy(texts, reverse=False)
    # the first sample's first and last lines are cut at the window's edges; the second is whole
    assert (r["products"], r["correct_products"]) == (3, 2)
    assert r["correct_product_fraction"] == pytest.approx(2 / 3)
    assert product_accuracy([], False)["correct_product_fraction"] == 0.0


def test_config_round_trip_keeps_the_new_fields():
    cfg = config_lib.load(None, ["data.source=multiply", "data.multiply_reverse=true",
                                 "data.max_train_tokens=4096"])
    assert dataclasses.asdict(cfg.data)["multiply_reverse"] is True and cfg.data.max_train_tokens == 4096
