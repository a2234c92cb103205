"""Sweeps with named axes, fixed-order scores and the attention summary in the report."""
import csv
from pathlib import Path

import pytest

from jaxorder.config import ConfigError
from jaxorder.experiments.sweep import expand, load_sweep, run_sweep

from conftest import tiny_config_yaml


def write_sweep(tmp_path, base, body: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: t\nbase: {base}\n{body}")
    return path


def test_axes_times_grid_expand_with_names(tmp_path, tiny_config_file):
    path = write_sweep(tmp_path, tiny_config_file,
                       "axes:\n"
                       "  - {a: [objective.name=l2r], b: [objective.name=bd3, objective.block_size=4]}\n"
                       "  - {small: [train.steps=5], big: [train.steps=7]}\n"
                       "grid:\n  optimizer.lr: [0.001, 0.002]\n")
    runs = expand(load_sweep(path))
    assert [n for n, _ in runs][:3] == ["a_small_lr-0.001", "a_small_lr-0.002", "a_big_lr-0.001"]
    assert len(runs) == 8
    named = dict(runs)
    assert named["b_big_lr-0.002"].objective.block_size == 4 and named["b_big_lr-0.002"].train.steps == 7


def test_bad_sweeps(tmp_path, tiny_config_file):
    for body, message in [("axes: {a: []}\n", "axes"), ("orders: sideways\n", "unknown order"),
                          ("generate: {samplers: [sideways]}\n", "unknown samplers"),
                          ("generate: {num_samples: 0}\n", "positive integer"),
                          ("generate: {sideways: 1}\n", "'generate' must be a mapping"),
                          ("generate: {samplers: [ar], steps: 4}\n", "a sampler that takes it"),
                          ("generate: {threshold: [0.5, 2.0]}\n", "threshold must be in"),
                          ("axes:\n  - {a: [], b: []}\n  - {a: []}\n", None)]:
        path = write_sweep(tmp_path, tiny_config_file, body)
        if message:
            with pytest.raises(ConfigError, match=message):
                load_sweep(path)
    path = write_sweep(tmp_path, tiny_config_file, "axes:\n  - {x: [], y: [objective.name=mdm]}\n"
                                                   "grid:\n  objective.name: [l2r]\n")
    assert [n for n, _ in expand(load_sweep(path))] == ["x_l2r", "y_l2r"]


def test_report_has_order_scores_and_slash_fraction(tmp_path, text_corpus):
    base = tmp_path / "base.yaml"
    base.write_text(tiny_config_yaml(text_corpus, steps=20, checkpoint_every=20, eval_every=20))
    path = write_sweep(tmp_path, base,
                       "axes:\n  - {l2r: [objective.name=l2r], mdm: [objective.name=mdm]}\n"
                       "orders: l2r,greedy\norder_windows: 2\nattention_summary: true\n"
                       "generate: {num_samples: 2, samplers: [confidence, ancestral, info-gain, ar], "
                       "steps: 8, candidates: 2}\n")
    results = run_sweep(path, tmp_path / "out")
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert set(rows) == {"l2r", "mdm"}
    assert rows["l2r"]["order:l2r"] == "" and float(rows["mdm"]["order:l2r"]) > 0
    assert float(rows["mdm"]["order:greedy"]) > 0 and float(rows["mdm"]["order:yardstick"]) > 0
    for r in rows.values():
        assert 0.0 <= float(r["slash_dominant_fraction"]) <= 1.0
    assert "order l2r" in (tmp_path / "out" / "results.md").read_text()
    assert results[1]["orders"]["l2r"]["bpb"] == pytest.approx(float(rows["mdm"]["order:l2r"]))
    assert results[1]["orders"]["l2r"]["bpb_stderr"] == pytest.approx(float(rows["mdm"]["order_stderr:l2r"]))
    assert results[1]["orders"]["l2r"]["bpb_stderr"] > 0 and results[1]["orders"]["l2r"]["windows"] == 2
    # the sampler table: each run with the samplers its objective has; the l2r run judges the mdm samples
    table = list(csv.DictReader((tmp_path / "out" / "samplers.csv").open()))
    samplers = [(r["run"], r["sampler"], r.get("judge_bpb", "")) for r in table]
    assert [(run, sampler) for run, sampler, _ in samplers] == [("l2r", "ar"), ("mdm", "confidence"),
                                                                ("mdm", "ancestral"), ("mdm", "info-gain")]
    assert samplers[0][2] == "" and all(float(bpb) > 0 for _, _, bpb in samplers[1:])
    # the cumulative uncertainty per token beside the quality, for the masked samplers only
    assert table[0]["uncertainty_per_token"] == ""
    assert all(float(r["uncertainty_per_token"]) > 0 for r in table[1:])
    assert "## Samplers" in (tmp_path / "out" / "results.md").read_text()
    assert all(g["tokens_per_s"] > 0 and g["steps"] == 8 for g in results[1]["generate"])


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_sweep_loads_and_expands(path):
    """A shipped sweep that no longer validates (a renamed option, a bad order spec) fails here, not hours
    into a study."""
    runs = expand(load_sweep(path))
    assert runs and len({name for name, _ in runs}) == len(runs)
