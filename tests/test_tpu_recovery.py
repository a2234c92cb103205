"""tpu/launch.py launch --retries: the recovery state machine (pure), the loop against a fake `gcloud`
first on PATH (it replays TPU states and worker answers and records every call), the worker probe on
a fake worker, and the --dry-run plan."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tpu_launch", REPO / "tpu" / "launch.py")
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)
rec_mod, remote = launch.recovery, launch.remote
Recovery, Polled, Ran, step = rec_mod.Recovery, rec_mod.Polled, rec_mod.Ran, rec_mod.step

TARGET = ["--project", "proj-test-123", "--zone", "europe-west4-b", "--name", "tpu-test"]
JOB = ["cfg.yaml", "--run-dir", "gs://b/r", "train.steps=100", "--accelerator-type", "v5p-8",
       "--git-url", "https://example.com/me/jaxorder.git", "--poll-seconds", "0"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("JAXORDER_TPU_"):
            monkeypatch.delenv(key)


# ------------------------------------------------------------------------------------------------
# the pure state machine


def run_events(rec: Recovery, events) -> list[str]:
    actions = []
    for event in events:
        rec, action = step(rec, event)
        actions.append(action)
    return actions


def test_step_preemption_then_finish():
    ready = Polled("READY", ("running", "running"))
    actions = run_events(Recovery(2), [
        ready, Polled("PREEMPTED"), Ran("delete", False), Ran("create", True), Polled("CREATING"),
        Polled("READY"), Ran("install", True), Ran("launch", True), Polled("READY", ("exit 0", "exit 0"))])
    assert actions == ["poll", "delete", "create", "poll", "poll", "install", "launch", "poll", "done"]


def test_step_counts_retries_and_gives_up_after_n():
    rec = Recovery(2)
    for _ in range(2):
        rec, action = step(rec, Polled("FAILED"))
        assert action == "delete" and rec.phase == "provision"
    assert rec.retries == 2
    rec, action = step(rec, Polled("FAILED"))
    assert action == "give_up" and "gave up after 2 of 2 retries" in rec.message and "FAILED" in rec.message
    # --retries 0 watches but never recovers
    assert step(Recovery(0), Polled("PREEMPTED"))[1] == "give_up"


@pytest.mark.parametrize("workers,action", [
    (("exit 0", "exit 0"), "done"),
    (("exit 0", "running"), "poll"),  # finishing: not a stray worker
    (("running", "running"), "poll"),
    (("exit 143", "exit 143"), "launch"),  # SIGTERM'd on a live TPU: relaunch, no recreate
    (("none", "exit 143"), "launch"),  # killed without an exit code (VM restarted)
    (("exit 1", "running"), "give_up"),  # a crash of the job itself: no retry
    (("exit 143", "exit 1"), "launch"),  # a peer's crash after losing a preempted worker: relaunch
    (("none", "exit 134"), "launch"),
])
def test_step_worker_answers(workers, action):
    rec, got = step(Recovery(3), Polled("ACTIVE", workers))
    assert got == action
    assert rec.retries == (1 if action == "launch" else 0)


def test_step_stray_and_unreachable_need_consecutive_polls():
    stray = Polled("READY", ("running", "exit 143"))
    actions = run_events(Recovery(3), [stray, stray, stray, Ran("halt", True)])
    assert actions == ["poll", "poll", "halt", "launch"]
    # a healthy poll in between restarts the count
    ok = Polled("READY", ("running", "running"))
    assert run_events(Recovery(3), [stray, stray, ok, stray, stray]) == ["poll"] * 5
    lost = Polled("READY", None)
    assert run_events(Recovery(3), [lost, lost, lost]) == ["poll", "poll", "delete"]
    assert run_events(Recovery(3), [lost, lost, ok, lost, lost]) == ["poll"] * 5


def test_step_not_found_creates_without_delete_and_waits_out_other_states():
    rec, action = step(Recovery(1), Polled("NOT_FOUND"))
    assert action == "create" and rec.retries == 1
    for state in ("WAITING_FOR_RESOURCES", "PROVISIONING", "REPAIRING", "ACCEPTED"):
        assert step(Recovery(1), Polled(state))[1] == "poll"
        assert step(Recovery(1, phase="provision"), Polled(state))[1] == "poll"
    # in provision, a NOT_FOUND (create failed: no capacity) is a retry as well
    assert step(Recovery(1, phase="provision", retries=1), Polled("NOT_FOUND"))[1] == "give_up"


def test_step_install_failure_is_a_retry_and_blind_polls_give_up():
    rec, action = step(Recovery(1, phase="provision"), Ran("install", False))
    assert action == "install" and rec.retries == 1
    assert step(rec, Ran("install", False))[1] == "give_up"
    rec = Recovery(1)
    for _ in range(rec_mod.MAX_BLIND_POLLS - 1):
        rec, action = step(rec, Polled("UNKNOWN"))
        assert action == "poll"
    rec, action = step(rec, Polled("UNKNOWN"))
    assert action == "give_up" and "describe failed" in rec.message and rec.retries == 0


# ------------------------------------------------------------------------------------------------
# the loop against a fake gcloud

FAKE = r'''
import json, os, sys
d = os.environ["FAKE_GCLOUD_DIR"]
argv = sys.argv[1:]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")
scenario = json.load(open(os.path.join(d, "scenario.json")))
def pop(key):
    n_path = os.path.join(d, key + ".n")
    n = int(open(n_path).read()) if os.path.exists(n_path) else 0
    open(n_path, "w").write(str(n + 1))
    seq = scenario[key]
    return seq[min(n, len(seq) - 1)]
command = next((a for a in argv if a.startswith("--command=")), "")
if "describe" in argv:
    state = pop("states")
    if state == "NOT_FOUND":
        sys.stderr.write("ERROR: (gcloud.compute.tpus) NOT_FOUND: Resource tpu-test was not found\n")
        sys.exit(1)
    print(state)
elif "JAXORDER_PROBE" in command:
    answer = pop("probes")
    if answer is None:
        sys.stderr.write("ssh: connect to host: Connection timed out\n")
        sys.exit(255)
    for i, status in enumerate(answer):
        print(f"JAXORDER_PROBE t1v-worker-{i} {status}")
'''


def kind_of(argv: list[str]) -> str:
    command = next((a for a in argv if a.startswith("--command=")), "")
    if "JAXORDER_PROBE" in command:
        return "probe"
    if "nohup" in command:
        return "launch"
    if "pip install" in command:
        return "install"
    if "halted" in command:
        return "halt"
    return argv[4]  # describe, create, delete, scp


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\n{FAKE}")
    gcloud.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_DIR", str(tmp_path))

    def play(states, probes, argv) -> tuple[int, list[list[str]], str]:
        (tmp_path / "scenario.json").write_text(json.dumps({"states": states, "probes": probes}))
        rc = launch.main(argv)
        lines = (tmp_path / "calls.jsonl").read_text().splitlines()
        return rc, [["gcloud", *json.loads(line)] for line in lines]
    return play


def test_fake_gcloud_preempted_vm_is_recreated_reinstalled_and_relaunched(fake_gcloud, capsys):
    rc, calls = fake_gcloud(["READY", "PREEMPTED", "CREATING", "READY", "READY"],
                            [["running", "running"], ["exit 0", "exit 0"]],
                            ["launch", *TARGET, *JOB, "--retries", "2", "--spot"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert [kind_of(c) for c in calls] == ["launch", "describe", "probe", "describe", "delete", "create",
                                           "describe", "describe", "install", "launch", "describe", "probe"]
    create = calls[5]
    assert create[3:5] == ["tpu-vm", "create"] and "--spot" in create and "--accelerator-type=v5p-8" in create
    assert calls[4][3:5] == ["tpu-vm", "delete"] and "--quiet" in calls[4]  # unattended: no prompt
    assert calls[0] == calls[9]  # the very same launch command: training resumes from RUN_DIR
    assert "--format=value(state)" in calls[1]
    assert "retry 1/2: TPU state PREEMPTED" in err and "the job finished (exit 0 on all 2 workers)" in err


def test_fake_gcloud_gives_up_after_n_retries(fake_gcloud, capsys):
    rc, calls = fake_gcloud(["ACTIVE", "SUSPENDED"], [["running"]],
                            ["launch", *TARGET, *JOB, "--queued", "--spot", "--retries", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    assert [kind_of(c) for c in calls] == ["launch", "describe", "probe", "describe", "delete", "create",
                                           "describe", "delete", "create", "describe"]
    assert all(c[3] == "queued-resources" for c in calls if kind_of(c) in ("describe", "create", "delete"))
    assert "--format=value(state.state)" in calls[1]
    assert "--force" in calls[4] and "--quiet" in calls[4]
    assert "gave up after 2 of 2 retries (last: TPU state SUSPENDED)" in err


def test_fake_gcloud_relaunch_in_place_create_when_gone_and_stop_on_a_crash(fake_gcloud, capsys):
    rc, calls = fake_gcloud(["READY", "READY", "NOT_FOUND", "READY", "READY"],
                            [["exit 143", "none"], ["running", "running"], ["exit 1", "running"]],
                            ["launch", *TARGET, *JOB, "--retries", "5"])
    err = capsys.readouterr().err
    assert rc == 1
    assert [kind_of(c) for c in calls] == ["launch", "describe", "probe", "launch", "describe", "probe",
                                           "describe", "create", "describe", "install", "launch",
                                           "describe", "probe"]
    assert "retry 1/5" in err and "retry 2/5: TPU state NOT_FOUND" in err and "retry 3/5" not in err
    assert "exited with code 1" in err


def test_fake_gcloud_unreachable_workers_then_recreate(fake_gcloud, capsys):
    rc, calls = fake_gcloud(["READY"], [None, None, None, ["exit 0"]],
                            ["launch", *TARGET, *JOB, "--retries", "1"])
    assert rc == 0, capsys.readouterr().err
    assert [kind_of(c) for c in calls] == ["launch"] + ["describe", "probe"] * 3 + [
        "delete", "create", "describe", "install", "launch", "describe", "probe"]


# ------------------------------------------------------------------------------------------------
# the probe on a fake worker, the dry-run plan, bad flags


def _bash(script: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=20)


def test_probe_reports_running_exit_code_and_none_on_a_fake_worker(tmp_path, capsys):
    home = tmp_path / "home"
    venv_bin = home / "jaxorder" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "jaxorder"
    fake.write_text(f"#!{sys.executable}\nimport sys, time\ntime.sleep(1.0)\nsys.exit(143)\n")
    fake.chmod(0o755)
    args = launch.build_parser().parse_args(["launch", *TARGET, "cfg.yaml", "--run-dir", "gs://b/r"])
    probe = remote.probe_script(args)
    assert remote.parse_probe(_bash(probe, home).stdout) == ("none",)
    assert _bash(remote.launch_script(args), home).returncode == 0
    assert remote.parse_probe(_bash(probe, home).stdout) == ("running",)  # launch returns after the pid
    deadline = time.time() + 10
    while time.time() < deadline and remote.parse_probe(_bash(probe, home).stdout) == ("running",):
        time.sleep(0.1)
    assert remote.parse_probe(_bash(probe, home).stdout) == ("exit 143",)
    # gcloud may prefix a worker's lines; anything else in the output is ignored
    out = "Using ssh batch size of 1.\n[worker-1] JAXORDER_PROBE h1 exit 0\nJAXORDER_PROBE h2 running\n"
    assert remote.parse_probe(out) == ("exit 0", "running")


def test_dry_run_spells_out_the_recovery_loop(capsys):
    assert launch.main(["launch", *TARGET, *JOB, "--retries", "3", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(("gcloud ", "#")) for line in lines)
    kinds = [kind_of(shlex.split(line)) for line in lines if line.startswith("gcloud ")]
    assert kinds == ["launch", "describe", "probe", "launch", "halt", "launch", "delete", "create", "create",
                     "describe", "install", "launch"]
    text = "\n".join(lines)
    assert "3 retries" in text and "gave up after 3 of 3 retries" in text and "PREEMPTED" in text


@pytest.mark.parametrize("extra,needle", [
    ([], "--accelerator-type"),
    (["--accelerator-type", "v5p-8", "--retries", "-1"], "--retries"),
])
def test_retries_needs_create_options(capsys, extra, needle):
    argv = ["launch", *TARGET, "cfg.yaml", "--run-dir", "gs://b/r", "--retries", "2", *extra, "--dry-run"]
    assert launch.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and needle in captured.err
