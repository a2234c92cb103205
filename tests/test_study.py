"""`jaxorder study`: a study YAML's sweeps and analyses end to end into one report page, reuse on a second
call, and one-line errors for bad study files before anything trains."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest

from jaxorder import cli
from jaxorder.experiments.study import Analysis, is_current, load_study, newest_checkpoint_mtime
from jaxorder.experiments.study_page import grad_snr_numbers, loss_profile_numbers, mixtures_numbers
from jaxorder.experiments.sweep import run_sweep

from conftest import REPO, tiny_config_yaml

MIXTURES = {"sweep": "t", "run": "mdm", "kind": "mixtures", "flags": "--ks 1,2 --windows 2"}


@pytest.fixture(scope="module")
def sweep_yaml(tmp_path_factory, text_corpus) -> Path:
    """A tiny sweep `t`: l2r and mdm, 5 steps each (one checkpoint, one validation)."""
    root = tmp_path_factory.mktemp("study_sweep")
    base = root / "base.yaml"
    base.write_text(tiny_config_yaml(text_corpus, steps=5, checkpoint_every=5, eval_every=5))
    path = root / "t.yaml"
    path.write_text(f"name: t\nbase: {base}\n"
                    "axes:\n  - {l2r: [objective.name=l2r], mdm: [objective.name=mdm]}\n")
    return path


@pytest.fixture(scope="module")
def trained_sweeps(sweep_yaml, tmp_path_factory) -> Path:
    """The sweeps directory after `jaxorder sweep` of `t` (SWEEPS/t/{l2r,mdm}): the study must reuse it."""
    sweeps = tmp_path_factory.mktemp("study_runs")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_sweep(sweep_yaml, sweeps / "t")
    return sweeps


@pytest.fixture
def study_files(tmp_path, sweep_yaml):
    """Writes a study YAML (the sweep path SWEEP stands for the tiny sweep's absolute path)."""

    def write(body: dict) -> Path:
        path = tmp_path / "studies" / "s.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(body).replace('"SWEEP"', json.dumps(str(sweep_yaml))))  # JSON is YAML
        return path

    return write


def _study(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # two tiny training runs, their evaluation and one analysis: ~60 s on 2 shared cores
def test_study_runs_sweeps_and_analysis_into_one_page_and_reuses_them(study_files, trained_sweeps, tmp_path,
                                                                      capsys):
    study = study_files({"name": "s", "sweeps": ["SWEEP"], "analyses": [MIXTURES]})
    out, sweeps = tmp_path / "study", trained_sweeps
    argv = ["study", study, "--out", out, "--sweeps-dir", sweeps]
    trained = _mtimes(sweeps / "t")
    code, _, err = _study(argv, capsys)
    assert code == 0, err
    assert "sweep 1/1 t (2 runs)" in err and "analysis 1/1 mixtures on t/mdm ->" in err
    page = (out / "report.md").read_text()
    # the header, the sweep's own results table (with its s.e. column) and its figures, copied
    assert "- git commit: " in page and "- machine: " in page and "cores" in page
    assert "| run | objective | val bits/byte | ± s.e. |" in page
    results = json.loads((sweeps / "t" / "results.json").read_text())["runs"]
    for r in results:
        assert re.search(rf"\| {r['run']} \| {r['objective']} \| {r['bpb']:.4f} \| {r['bpb_stderr']:.4f} \|",
                         page), r["run"]
    assert "](figures/t/val_bpb.png)" in page and (out / "figures" / "t" / "val_bpb.png").stat().st_size > 0
    assert "\n## sweep t\n" in page  # the sweep's title one level below the page's
    # the analysis's key numbers are its JSON's, and its figure is linked relatively inside the study dir
    mix = json.loads((out / "analysis" / "t" / "mdm" / "mixtures" / "mixtures.json").read_text())
    for k in ("1", "2"):
        b = mix["bound_nats_per_token"][k]
        assert f"| {k} | {b['mean']:.4f} | {b['stderr']:.4f} |" in page
    assert f"{mix['effective_orders']['mean']:.3f} ± " in page
    assert "](analysis/t/mdm/mixtures/mixtures.png)" in page
    # every linked image exists relative to the page, so the directory can be moved as a whole
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        assert (out / link).is_file(), link

    before_runs, before_analysis = _mtimes(sweeps / "t"), _mtimes(out / "analysis")
    for runs in (trained, before_runs):  # the finished sweep's runs were reused: no retraining
        for name in ("l2r", "mdm"):
            assert all(before_runs[k] == runs[k] for k in runs
                       if k.startswith(f"{name}/checkpoints/") or k == f"{name}/metrics.jsonl"), name
    code, _, err = _study(argv, capsys)
    assert code == 0, err
    assert "analysis 1/1 mixtures on t/mdm: reused" in err
    after_runs = _mtimes(sweeps / "t")
    for name in ("l2r", "mdm"):  # no retraining: checkpoints and metrics untouched
        kept = [k for k in before_runs
                if k.startswith(f"{name}/checkpoints/") or k == f"{name}/metrics.jsonl"]
        assert kept and all(after_runs[k] == before_runs[k] for k in kept), name
    assert _mtimes(out / "analysis") == before_analysis

    # a newer checkpoint (a resumed run) makes the analysis stale: it runs again
    ckpt = max((sweeps / "t" / "mdm" / "checkpoints").glob("[0-9]*"), key=lambda p: p.stat().st_mtime)
    future = before_analysis["t/mdm/mixtures/mixtures.json"] + 100
    os.utime(ckpt, (future, future))
    code, _, err = _study(argv, capsys)
    assert code == 0 and "analysis 1/1 mixtures on t/mdm ->" in err, err
    assert (out / "analysis" / "t" / "mdm" / "mixtures" / "mixtures.json").stat().st_mtime > \
        before_analysis["t/mdm/mixtures/mixtures.json"]


@pytest.mark.slow  # three analyses of the tiny runs (more compilations): ~40 s on 2 shared cores
def test_every_analysis_kind_puts_its_numbers_on_the_page(study_files, trained_sweeps, tmp_path, capsys):
    analyses = [{"sweep": "t", "run": "mdm", "kind": "loss-profile",
                 "flags": "--windows 2 --draws 1 --bins 2"},
                {"sweep": "t", "run": "mdm", "kind": "grad-snr", "flags": ["--batches", "2", "--bins", "2"]},
                {"sweep": "t", "run": "l2r", "kind": "attention",
                 "flags": "--windows 2 --ablate-slash 1 --ablate-draws 2"}]
    out = tmp_path / "study"
    code, _, err = _study(["study", study_files({"sweeps": ["SWEEP"], "analyses": analyses}), "--out", out,
                           "--sweeps-dir", trained_sweeps], capsys)
    assert code == 0, err
    page = (out / "report.md").read_text()
    analysis = out / "analysis" / "t"
    profile = json.loads((analysis / "mdm" / "loss-profile" / "loss-profile.json").read_text())
    for r in profile["by_mask_rate"]:
        if r["nll"] is not None:
            assert f"| {r['pairs']} | {r['masked_tokens']} | {r['nll']:.4f} |" in page
    for name, c in profile["by_position"].items():
        assert f"| {name} | {c['sequence_nll']:.3f} |" in page
    snr = json.loads((analysis / "mdm" / "grad-snr" / "grad-snr.json").read_text())["by_step"]["5"]
    assert f"| 5 | 2 | {snr['loss']['snr']:.3f} |" in page
    assert f"{snr['by_mask_rate'][1]['snr']:.3f} |" in page
    heads = json.loads((analysis / "l2r" / "attention" / "heads.json").read_text())
    fraction = heads["summary"]["slash_dominant_fraction"]
    assert f"| slash-dominant heads (>= 0.5) | {fraction:.2f} |" in page
    assert "zero top-1 slash heads" in page and f"base loss {heads['ablation']['loss_base']:.4f}" in page
    for png in ("loss_by_mask_rate", "loss_by_position", "grad_snr", "attention_heads", "slash_vs_offset"):
        assert f"![{png}](analysis/t/" in page, png
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        assert (out / link).is_file(), link


def test_is_current_needs_outputs_same_flags_and_newer_than_the_checkpoint(tmp_path):
    run_dir, study_dir = tmp_path / "run", tmp_path / "study"
    (run_dir / "checkpoints" / "5").mkdir(parents=True)
    (run_dir / "checkpoints" / "10").mkdir()
    os.utime(run_dir / "checkpoints" / "5", (1000, 1000))
    os.utime(run_dir / "checkpoints" / "10", (2000, 2000))
    assert newest_checkpoint_mtime(run_dir) == 2000
    a = Analysis("t", "mdm", "mixtures", ("--ks", "1,2"))
    assert not is_current(a, study_dir, run_dir)  # nothing written yet
    a.out_dir(study_dir).mkdir(parents=True)
    a.main_file(study_dir).write_text("{}")
    (a.out_dir(study_dir) / "study_args.json").write_text(json.dumps({"flags": ["--ks", "1,2"]}))
    os.utime(a.main_file(study_dir), (3000, 3000))
    assert is_current(a, study_dir, run_dir)
    assert not is_current(Analysis("t", "mdm", "mixtures", ("--ks", "1,4")), study_dir, run_dir)
    os.utime(a.main_file(study_dir), (1500, 1500))  # older than the newest checkpoint (step 10)
    assert not is_current(a, study_dir, run_dir)
    attention = Analysis("t", "mdm", "attention", ())
    assert attention.main_file(study_dir).name == "heads.json"


@pytest.mark.parametrize("body, expected", [
    ({"sweeps": ["../sweeps/nope.yaml"]}, "sweeps[0]: sweep file not found"),
    ({"sweeps": []}, "'sweeps' must be a non-empty list"),
    ({"sweeps": ["SWEEP"], "sideways": 1}, "unknown study keys ['sideways']"),
    ({"sweeps": ["SWEEP", "SWEEP"]}, "sweep 't' is listed twice"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "run": "bd3"}]},
     "analyses[0]: sweep t has no run 'bd3'; its runs are l2r, mdm"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "kind": "sideways"}]},
     "unknown analysis kind 'sideways'; known: attention, mixtures, loss-profile, grad-snr"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "sweep": "other"}]},
     "unknown sweep 'other'; the study's sweeps are t"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "flags": "--ks 3,4"}]}, "--ks '3,4'"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "flags": "--sideways 1"}]},
     "unrecognized arguments: --sideways 1"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "flags": "--out x"}]},
     "are set by the study"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "flags": "--bins 0"}]},
     "--bins must be >= 1"),
    ({"sweeps": ["SWEEP"], "analyses": [{**MIXTURES, "run": "l2r"}]},
     "fixed-order scoring needs a run of"),
    ({"sweeps": ["SWEEP"], "analyses": [MIXTURES, MIXTURES]}, "mixtures on t/mdm is listed twice"),
    ({"sweeps": ["SWEEP"], "analyses": [{"sweep": "t", "run": "mdm"}]},
     "must be a mapping of sweep, run, kind"),
])
def test_bad_study_is_a_one_line_error_before_training(body, expected, study_files, tmp_path, capsys):
    code, out, err = _study(["study", study_files(body), "--out", tmp_path / "study", "--sweeps-dir",
                             tmp_path / "runs"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "study").exists()  # nothing ran


@pytest.mark.slow  # `sweep --plan` compiles and times a train step per run: ~45 s on 2 shared cores
def test_plan_prints_each_sweep_plan_and_the_analyses_without_training(study_files, sweep_yaml, tmp_path,
                                                                       capsys):
    study = study_files({"sweeps": ["SWEEP"], "analyses": [MIXTURES]})
    code, out, err = _study(["study", study, "--plan", "--out", tmp_path / "study", "--sweeps-dir",
                             tmp_path / "runs"], capsys)
    assert code == 0, err
    assert f"sweep t ({sweep_yaml}) -> {tmp_path / 'runs' / 't'}: 2 runs" in out
    assert re.search(r"^l2r +[\d,]+ ", out, re.M) and re.search(r"^mdm +[\d,]+ ", out, re.M)  # sweep --plan
    assert "estimated training time" in out
    assert re.search(r"mixtures +t/mdm +--ks 1,2 --windows 2 +\[run\]", out)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "study").exists()


def test_the_shipped_study_names_real_sweeps_runs_and_flags():
    study = load_study(REPO / "configs" / "studies" / "order_study_smoke.yaml")
    assert [s.name for s in study.sweeps] == ["orders_study_smoke", "block_sizes", "direction",
                                              "data_constrained", "compute_scaling", "positions",
                                              "latent_collapse"]
    covered = {(a.kind, a.run) for a in study.analyses}
    assert {("mixtures", "corpus_mdm"), ("mixtures", "corpus_ao_ar"), ("mixtures", "corpus_latent_k4"),
            ("loss-profile", "corpus_l2r"), ("loss-profile", "corpus_r2l"), ("loss-profile", "corpus_mdm"),
            ("grad-snr", "corpus_mdm"), ("grad-snr", "corpus_l2r"), ("attention", "corpus_l2r"),
            ("attention", "corpus_mdm")} <= covered


def test_key_number_writers_read_the_analysis_json():
    mixtures = {"step": 400, "windows": 3, "length": 8, "orders": 4,
                "bound_nats_per_token": {"1": {"mean": 2.5, "stderr": 0.1},
                                         "4": {"mean": 2.25, "stderr": None}},
                "effective_orders": {"mean": 1.75, "stderr": 0.05},
                "best_order_kendall_tau": {"mean": -0.5, "stderr": 0.2}}
    text = mixtures_numbers(mixtures)
    assert "| 1 | 2.5000 | 0.1000 |" in text and "| 4 | 2.2500 | n/a |" in text
    assert "1.750 ± 0.050" in text and "-0.500 ± 0.200" in text
    profile = {"step": 5, "windows": 2, "by_mask_rate": [
        {"t_lo": 0.0, "t_hi": 0.5, "pairs": 3, "masked_tokens": 7, "nll": 1.5, "nll_stderr": 0.25}],
        "by_position": {"l2r": {"mean": [3.0, 1.0], "stderr": [0.5, 0.1], "sequence_nll": 4.0}}}
    text = loss_profile_numbers(profile)
    assert "| 0.00-0.50 | 3 | 7 | 1.5000 | 0.2500 |" in text
    assert "| l2r | 4.000 | 2.0000 | 3.0000 ± 0.5000 | 1.0000 ± 0.1000 |" in text
    snr = {"batch_size": 8, "by_step": {
        "10": {"loss": {"snr": 2.0, "mean_norm": 1.0, "spread": 0.5, "batches": 3},
               "by_mask_rate": [{"t": 0.25, "snr": 3.0}, {"t": 0.75, "snr": None}]},
        "5": {"loss": {"snr": 1.0, "mean_norm": 1.0, "spread": 1.0, "batches": 3}, "by_mask_rate": None}}}
    rows = [line for line in grad_snr_numbers(snr).splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| t=0.25 | t=0.75 |")
    assert rows[1].startswith("| 5 | 3 | 1.000 |") and rows[2] == "| 10 | 3 | 2.000 | 1 | 0.5 | 3.000 | n/a |"
