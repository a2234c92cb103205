"""tools/plot_learning_curves.py: the table it prints (last value, difference to the baseline) and the PNG."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("plot_learning_curves",
                                              REPO / "tools" / "plot_learning_curves.py")
plot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot)


def fake_run(path, val):
    path.mkdir()
    records = [{"step": s, "split": "train", "loss": 1.0} for s in val]
    records += [{"step": s, "split": "val", "bpb": b, "bpb_stderr": 0.01} for s, b in val.items()]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_table_is_the_last_value_and_its_difference_to_the_baseline_at_that_step(tmp_path, capsys):
    base = fake_run(tmp_path / "base", {100: 3.0, 200: 2.8, 300: 2.7})
    a = fake_run(tmp_path / "a", {100: 3.1, 200: 2.6})
    b = fake_run(tmp_path / "b", {100: 2.9, 200: 2.7, 300: 2.55, 400: 2.5})
    out = tmp_path / "curves.png"
    plot.main([str(out), "--baseline", str(base), f"x={a}", f"x={b}", f"base={base}"])
    text = capsys.readouterr().out
    assert "| a | x | 200 | 2.600 | -0.200 |" in text
    assert "| b | x | 400 | 2.500 | n/a |" in text  # the baseline has no step 400
    assert "| base | base | 300 | 2.700 | +0.000 |" in text
    assert out.stat().st_size > 1000


def test_bad_arguments_stop_with_a_message(tmp_path):
    base = fake_run(tmp_path / "base", {100: 3.0})
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    for args in ([f"{base}"], [f"x={empty}"]):
        with pytest.raises(SystemExit) as info:
            plot.main([str(tmp_path / "o.png"), "--baseline", str(base), *args])
        assert info.value.code == 2
