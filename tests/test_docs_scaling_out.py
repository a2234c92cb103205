"""docs/scaling-out.md stays copy-pasteable: every `python tpu/launch.py` command of its bash blocks
runs with --dry-run (exit 0), and every config path it names exists."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "scaling-out.md"
spec = importlib.util.spec_from_file_location("tpu_launch", REPO / "tpu" / "launch.py")
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)


def page_commands() -> list[list[str]]:
    """The launcher commands of the page's ```bash blocks, continuation lines joined, $BUCKET kept."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines()
            if line.startswith("python tpu/launch.py")]


def test_the_page_has_the_walk_through():
    commands = page_commands()
    subcommands = {argv[2] for argv in commands}
    assert {"create", "install", "launch", "status", "logs", "stop", "delete"} <= subcommands
    assert any("--retries" in argv for argv in commands)
    assert "## Profile" in PAGE.read_text()


@pytest.mark.parametrize("argv", page_commands(), ids=lambda argv: " ".join(argv[2:5]))
def test_every_launcher_command_of_the_page_runs_in_dry_run(argv, monkeypatch, capsys):
    for key in list(os.environ):
        if key.startswith("JAXORDER_TPU_"):
            monkeypatch.delenv(key)
    # the page's `export` line
    exports = re.search(r"^export (JAXORDER_TPU_.*)$", PAGE.read_text(), flags=re.M).group(1)
    for pair in shlex.split(exports):
        key, value = pair.split("=", 1)
        monkeypatch.setenv(key, value)
    args = [a.replace("$BUCKET", "my-bucket") for a in argv[2:]]
    rc = launch.main(args if "--dry-run" in args else [*args, "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith("gcloud ")


def test_config_paths_named_on_the_page_exist():
    paths = set(re.findall(r"configs/[\w/]+\.yaml", PAGE.read_text()))
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert paths and not missing, missing
