"""Optional dependencies: a missing one is a one-line error naming the install extra (exit 2 on the
command line), whichever integration asks for it. The libraries are hidden here, so these tests
run whether or not the extras are installed."""
from __future__ import annotations

import builtins
import sys

import pytest

from jaxorder.interop.extras import MissingExtra, require

from conftest import cli_in_process


@pytest.fixture
def hide(monkeypatch):
    """hide(*names): importing any of these top-level packages raises ImportError."""
    real_import = builtins.__import__

    def apply(*names: str) -> None:
        def fake(name, *args, **kwargs):
            if name.split(".")[0] in names:
                raise ImportError(f"No module named '{name}'", name=name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake)
        for mod in [m for m in sys.modules if m.split(".")[0] in names]:
            monkeypatch.delitem(sys.modules, mod)

    return apply


def test_require_names_the_extra(hide):
    hide("wandb")
    with pytest.raises(MissingExtra) as e:
        require("wandb", "wandb", "logging.wandb")
    assert str(e.value) == ("logging.wandb needs the optional dependency 'wandb', which is not installed; "
                            "install the [wandb] extra: pip install -e '.[wandb]'")


def test_export_without_the_hf_extra_is_one_line_exit_2(hide, finished_run, tmp_path):
    hide("safetensors", "transformers", "torch")
    code, out, err = cli_in_process(["export", "hf", finished_run.run_dir, tmp_path / "out"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "pip install -e '.[hf]'" in err and not (tmp_path / "out").exists()


def test_wandb_logging_without_the_extra_is_one_line_exit_2(hide, tiny_config_file, tmp_path):
    hide("wandb")
    code, _, err = cli_in_process(["train", tiny_config_file, "--run-dir", tmp_path / "run", "train.steps=1",
                                   "logging.wandb={project: p}"])
    assert code == 2 and err.strip().splitlines()[-1].endswith("pip install -e '.[wandb]'")
