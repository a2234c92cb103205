"""Bad input named by the issue "Nothing lost, nothing silent" ends in one line (what, where, the
fix; exit 2) or a documented handling, never a traceback: config files and values, eval options,
corpora, a metrics.jsonl cut short by a killed writer, and XLA running out of memory."""
from __future__ import annotations

import json

import jax
import pytest

from jaxorder import cli
from jaxorder.data.sources import decode_text
from jaxorder.training.metrics import MetricsWriter, read_metrics

from conftest import SENTENCE, step_dirs


def one_line_error(code: int, err: str, expected: str, status: int = 2) -> None:
    lines = err.strip().splitlines()
    assert code == status and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


CONFIG_FILES = {
    "not UTF-8": (b"model: {d_model: 32}\n# caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 26)"),
    "include: 5": (b"include: 5\n", "include must be a file name or a list of file names, got 5"),
    "include list of numbers": (b"include: [1, 2]\n", "include must be a file name or a list"),
    "a directory": (None, "config file not found"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_file(case, tmp_path, capsys):
    content, expected = CONFIG_FILES[case]
    path = tmp_path / "config.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code = cli.main(["train", str(path), "--run-dir", str(tmp_path / "run")])
    one_line_error(code, capsys.readouterr().err, expected)


BAD_VALUES = {
    "optimizer.lr=.nan": "optimizer.lr must be a finite number, got nan",
    "optimizer.lr=inf": "optimizer.lr must be a finite number",
    "optimizer.lr=-.inf": "optimizer.lr must be a finite number",
    "model.rope_base=0": "model.rope_base must be > 0",
    "model.rope_base=-10000": "model.rope_base must be > 0",
    "optimizer.b2=1": "optimizer.b2 must be in [0, 1)",
    "optimizer.b1=1.5": "optimizer.b1 must be in [0, 1)",
    "optimizer.weight_decay=-0.1": "optimizer.weight_decay must be >= 0",
    "train.max_bad_steps=0": "train.max_bad_steps must be > 0",
}


@pytest.mark.parametrize("override", list(BAD_VALUES))
def test_bad_config_value(override, tmp_path, tiny_config_file, capsys):
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "run"), override])
    one_line_error(code, capsys.readouterr().err, BAD_VALUES[override])
    assert step_dirs(tmp_path / "run") == []


@pytest.mark.parametrize("flag", ["--windows", "--max-windows", "--num-samples"])
def test_eval_counts_below_one(flag, finished_run, capsys):
    code = cli.main(["eval", str(finished_run.run_dir), "--orders", "l2r", flag, "-1"])
    named = "--windows" if flag == "--max-windows" else flag  # the old name is an alias of --windows
    one_line_error(code, capsys.readouterr().err, f"{named} must be >= 1, got -1")


CORPORA = {
    "empty": (b"", "all text files are empty"),
    "shorter than one window": (b"short text\n", "0 windows of data.seq_len=32"),
    "binary garbage": (bytes(range(256)) * 20, "does not look like text"),
    "mostly invalid UTF-8": (b"\xff\xfe" * 100 + SENTENCE.encode() * 4, "does not look like text"),
}


@pytest.mark.parametrize("case", list(CORPORA))
def test_bad_corpus(case, tmp_path, tiny_config_file, capsys):
    content, expected = CORPORA[case]
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "run"),
                     f"data.path={corpus}"])
    one_line_error(code, capsys.readouterr().err, expected)


def test_a_few_invalid_utf8_bytes_are_replaced_with_one_warning(tmp_path, capsys):
    raw = SENTENCE.encode() * 20 + b"caf\xe9 " + SENTENCE.encode() * 20
    text = decode_text(tmp_path / "t.txt", raw)
    assert "caf\ufffd " in text and len(text) == len(raw)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {tmp_path / 't.txt'}: 1 bytes are not valid UTF-8 and were replaced by U+FFFD"]


def test_a_metrics_line_cut_short_is_dropped_on_resume(tmp_path, capsys):
    # Steps 10-30 were logged, the checkpoint is at 20, and the writer was killed writing step 40.
    good = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (10, 20, 30)]
    lines = [json.dumps(r) for r in good]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[1][:17])  # killed mid-line
    assert read_metrics(tmp_path) == good
    writer = MetricsWriter(tmp_path, resume_step=20, enabled=True)
    writer.write(30, "train", {"loss": 0.5})
    writer.close()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "dropped 1 unreadable line" in err
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [10, 20, 30]  # every line parses, step 30 once (recomputed after the checkpoint of step 20)
    assert read_metrics(tmp_path)[-1]["loss"] == 0.5


def test_xla_out_of_memory_is_one_line_naming_the_settings(tmp_path, tiny_config_file, monkeypatch, capsys):
    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                         "12.00GiB.\nBufferAssignment OOM Debugging.\n" + "buffer\n" * 100)

    monkeypatch.setattr(cli, "train_with_restarts", oom)
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    one_line_error(code, err, "out of device memory (RESOURCE_EXHAUSTED", status=1)
    assert "data.batch_size" in err and "model.remat=full" in err
