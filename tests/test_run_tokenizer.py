"""Eval, sample and resume use the tokenizer.json saved in the run directory and refuse data or a
file whose tokenizer differs from the one the run was trained with (one line, exit 2)."""
from __future__ import annotations

import pytest

from jaxorder import cli
from jaxorder.data.bpe import bpe_for_documents

from conftest import SENTENCE, step_dirs


@pytest.fixture
def run_with_other_tokenizer(tmp_path, finished_run):
    """A copy of the finished byte-tokenizer run whose tokenizer.json was replaced by a BPE."""
    run = finished_run.copy_to(tmp_path / "run")
    bpe_for_documents([SENTENCE * 50], 270, use_cache=False).save(run / "tokenizer.json")
    return run


def _one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["eval", "train"])
def test_data_whose_tokenizer_differs_from_the_saved_one_is_refused(command, run_with_other_tokenizer,
                                                                    finished_run, capsys):
    run = run_with_other_tokenizer
    argv = (["eval", run] if command == "eval"
            else ["train", finished_run.config_path, "--run-dir", run, "train.steps=40"])
    line = _one_line_error(cli.main([str(a) for a in argv]), capsys.readouterr().err)
    assert "differs from the one" in line and "tokenizer.json" in line and "data.source=text" in line
    assert step_dirs(run) == [10, 20, 30]


def test_sample_decodes_with_the_saved_tokenizer(run_with_other_tokenizer, capsys):
    # The saved file, not the config, is read: its 270 ids do not fit the 260-id model.
    code = cli.main(["sample", str(run_with_other_tokenizer), "--length", "8"])
    line = _one_line_error(code, capsys.readouterr().err)
    assert "tokenizer.json has 270 ids but the run's model.vocab_size is 260" in line
