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
    python tpu/launch.py launch  ... --retries 3 --accelerator-type v5p-8 [--spot] [install flags]
                                     (watch the TPU and the job; after a preemption recreate,
                                      reinstall and relaunch, at most 3 times)
    python tpu/launch.py status | stop | delete | list

Defaults come from flags or the environment (JAXORDER_TPU_PROJECT, JAXORDER_TPU_ZONE,
JAXORDER_TPU_NAME, JAXORDER_TPU_ACCELERATOR_TYPE, JAXORDER_TPU_VERSION, JAXORDER_TPU_SLICES,
JAXORDER_TPU_RUN_DIR, JAXORDER_TPU_REMOTE_DIR); nothing project-specific is stored in the repo.
See tpu/README.md for the workflow and the topology -> mesh table, docs/scaling-out.md for a pod
user's walk-through. Modules: launch_gcloud.py (gcloud argv, running), launch_remote.py (the workers'
shell scripts), launch_recovery.py (the --retries state machine).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess  # noqa: F401 - tests replace subprocess.run through this module
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the launch_* modules beside this file

import launch_gcloud as gc  # noqa: E402
import launch_recovery as recovery  # noqa: E402
import launch_remote as remote  # noqa: E402
from launch_gcloud import UsageError, env  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------------------------
# subcommands: each returns (list of gcloud argv lists, optional local preparation callback)


def cmd_create(args):
    return [gc.create(args)], None


def cmd_install(args):
    gc.require(args, "project", "zone", "name", "remote_dir")
    pre, steps, target, prep = remote.source_steps(args)
    return [*pre, gc.ssh(args, remote.install_script(args, steps, target))], prep


def cmd_launch(args):
    gc.require(args, "project", "zone", "name", "run_dir", "remote_dir")
    if not args.run_dir.startswith("gs://"):
        print(f"warning: --run-dir {args.run_dir} is not on GCS: on a multi-host slice every worker must "
              "write the same run dir, and a preempted VM loses its disk; use gs://BUCKET/...",
              file=sys.stderr)
    return [gc.ssh(args, remote.launch_script(args))], None


def cmd_resume(args):
    # Resuming is relaunching the same command: jaxorder continues from the newest checkpoint in RUN_DIR.
    return cmd_launch(args)


def cmd_logs(args):
    gc.require(args, "project", "zone", "name", "remote_dir")
    log = f"{remote.rdir(args)}/{remote.LOG_DIR}/{remote.job(args)}.log"
    tail = f"tail -n {int(args.lines)}" + (" -F" if args.follow else "")
    return [gc.ssh(args, f"{tail} {log}", worker=args.worker, node=args.node)], None


def cmd_status(args):
    cmds = [gc.describe(args)]
    if not args.no_workers:
        cmds.append(gc.ssh(args, remote.status_script(args)))
    return cmds, None


def cmd_stop(args):
    gc.require(args, "project", "zone", "name", "remote_dir")
    return [gc.ssh(args, remote.stop_script(args))], None


def cmd_delete(args):
    return [gc.delete(args, yes=args.yes)], None


def cmd_list(args):
    return [gc.list_(args)], None


def recovery_plan(args, launch_commands):
    """(commands per action, describe argv, probe argv) of `launch --retries`: all built (and so
    checked) before anything runs."""
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0 (got {args.retries})")
    if args.poll_seconds < 0:
        raise UsageError(f"--poll-seconds must be >= 0 (got {args.poll_seconds})")
    plan = {recovery.LAUNCH: launch_commands, recovery.INSTALL: cmd_install(args),
            recovery.CREATE: cmd_create(args),
            recovery.DELETE: ([gc.delete(args, yes=True)], None),  # unattended: no confirmation prompt
            recovery.HALT: ([gc.ssh(args, remote.halt_script(args))], None)}
    return plan, gc.describe(args, state_only=True), gc.ssh(args, remote.probe_script(args))


# ----------------------------------------------------------------------------------------------
# parser


def _create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator-type", default=env("JAXORDER_TPU_ACCELERATOR_TYPE"),
                   help="e.g. v5litepod-16 (v5e-16 is accepted), v5p-128, v6e-256 "
                        "[$JAXORDER_TPU_ACCELERATOR_TYPE]")
    p.add_argument("--version", default=env("JAXORDER_TPU_VERSION"),
                   help="TPU runtime version (default per generation: "
                        + ", ".join(f"{k}: {v}" for k, v in gc.RUNTIME_VERSIONS.items())
                        + ") [$JAXORDER_TPU_VERSION]")
    p.add_argument("--spot", action="store_true", help="Spot capacity (preemptible; resume after preemption)")
    p.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU VM (not with --queued)")
    p.add_argument("--extra-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the gcloud create command, e.g. "
                        "--extra-arg=--network=NET (repeatable)")


def _install_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--git-url", help="clone this repository URL on the workers (default: copy this checkout)")
    p.add_argument("--git-ref", default="HEAD", help="branch, tag or commit for --git-url (default HEAD)")
    p.add_argument("--wheel", help="install this wheel (local path, copied with scp, or gs://...) instead of "
                                   "an editable checkout; configs are then not on the workers")
    p.add_argument("--python", default="python3.11", help="interpreter for the venv (default python3.11; "
                                                          "apt-installed when missing)")
    p.add_argument("--jax-version", help="jax[tpu] version (default: the jax== pin of pyproject.toml)")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    g = common.add_argument_group("target (defaults from the environment)")
    g.add_argument("--project", default=env("JAXORDER_TPU_PROJECT"),
                   help="GCP project id [$JAXORDER_TPU_PROJECT]")
    g.add_argument("--zone", default=env("JAXORDER_TPU_ZONE"),
                   help="zone, e.g. us-east5-a [$JAXORDER_TPU_ZONE]")
    g.add_argument("--name", default=env("JAXORDER_TPU_NAME"),
                   help="TPU VM / queued resource name [$JAXORDER_TPU_NAME]")
    g.add_argument("--queued", action="store_true",
                   help="the TPU is a queued resource (create/delete/status/list use `queued-resources`)")
    g.add_argument("--slices", type=int, default=int(env("JAXORDER_TPU_SLICES", 1)),
                   help="number of slices (> 1: multislice queued resource; ssh/scp with --node=all; "
                        "pair with mesh.dcn_data=N) [$JAXORDER_TPU_SLICES, default 1]")
    g.add_argument("--internal-ip", action="store_true", help="ssh/scp over internal IPs")
    g.add_argument("--dry-run", action="store_true",
                   help="print the gcloud commands, one per line, and run nothing")

    remote_p = _Parser(add_help=False)
    r = remote_p.add_argument_group("on the workers")
    r.add_argument("--remote-dir", default=env("JAXORDER_TPU_REMOTE_DIR", "jaxorder"),
                   help="checkout + .venv + tpu-logs/ on every worker; relative = under $HOME "
                        "[$JAXORDER_TPU_REMOTE_DIR, default jaxorder]")

    jobp = _Parser(add_help=False)
    jobp.add_argument("--job", default="train",
                      help=f"job name: log {remote.LOG_DIR}/JOB.log and pid file {remote.LOG_DIR}/JOB.pid "
                           f"(default train)")

    parser = _Parser(prog="tpu/launch.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Run `tpu/launch.py SUBCOMMAND -h` for the options of each step. "
                            "Workflow: tpu/README.md, docs/scaling-out.md")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND", parser_class=_Parser)

    p = sub.add_parser("create", parents=[common], help="create a TPU VM slice or a queued resource")
    _create_options(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("install", parents=[common, remote_p],
                       help="install jaxorder in a venv on every worker")
    _install_options(p)
    p.set_defaults(func=cmd_install)

    for name, func, text in (("launch", cmd_launch, "start `jaxorder train` on every "
                                                    "worker in the background"),
                             ("resume", cmd_resume, "relaunch the same command: training resumes from the "
                                                    "newest checkpoint in RUN_DIR")):
        p = sub.add_parser(name, parents=[common, remote_p, jobp], help=text,
                           epilog="Preemption sends SIGTERM: jaxorder saves a checkpoint and exits 143; "
                                  "`resume` with the same arguments continues from it, and --retries N "
                                  "does that (recreating and reinstalling the TPU) automatically.")
        p.add_argument("config", help="experiment YAML, relative to --remote-dir on the workers")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted config overrides, e.g. mesh.fsdp=-1 mesh.dcn_data=2 train.steps=10000")
        p.add_argument("--run-dir", default=env("JAXORDER_TPU_RUN_DIR"),
                       help="run directory shared by all workers: gs://BUCKET/PATH for a pod "
                            "[$JAXORDER_TPU_RUN_DIR]")
        p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="environment variable for the training process (repeatable)")
        p.add_argument("--no-distributed", action="store_true",
                       help="do not prepend distributed.mode=auto (multi-host "
                            "auto-detection) to the overrides")
        w = p.add_argument_group("automatic recovery (with --retries; the create and install options are "
                                 "used to recreate the TPU)")
        w.add_argument("--retries", type=int, default=None, metavar="N",
                       help="stay in the foreground, watch the TPU and the job, and after a preemption "
                            "recreate, reinstall and relaunch, at most N times; exit 0 when every worker's "
                            "job exits 0 (default: launch and return)")
        w.add_argument("--poll-seconds", type=float, default=60.0,
                       help="seconds between two looks at the TPU state and the workers (default 60)")
        _create_options(w)
        _install_options(w)
        p.set_defaults(func=func)

    p = sub.add_parser("logs", parents=[common, remote_p, jobp], help="tail a worker's training log")
    p.add_argument("--worker", default="0", help="worker index or `all` (default 0)")
    p.add_argument("--node", default=None, help="node index of a multislice queued resource (default all)")
    p.add_argument("--lines", "-n", type=int, default=100, help="lines to show (default 100)")
    p.add_argument("--follow", "-f", action="store_true", help="keep following the log (tail -F)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("status", parents=[common, remote_p, jobp],
                       help="describe the TPU and show on every worker whether training runs")
    p.add_argument("--no-workers", action="store_true", help="only describe; do not ssh to the workers")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", parents=[common, remote_p, jobp],
                       help="SIGTERM the training on every worker (checkpoint, exit 143)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM / queued resource (and its nodes)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (gcloud --quiet)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("list", parents=[common], help="list TPU VMs (or queued resources) in the zone")
    p.set_defaults(func=cmd_list)
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`launch CONFIG --run-dir D a.b=1`), which argparse leaves unparsed.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    watching = getattr(args, "retries", None) is not None
    try:
        if args.slices < 1:
            raise UsageError(f"--slices must be >= 1 (got {args.slices})")
        commands, prepare = args.func(args)
        if watching:
            plan, describe_argv, probe_argv = recovery_plan(args, (commands, prepare))
    except UsageError as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        lines = (recovery.plan_lines(plan, describe_argv, probe_argv, args.retries, args.poll_seconds)
                 if watching else [shlex.join(argv_) for argv_ in commands])
        print("\n".join(lines))
        return 0
    if shutil.which("gcloud") is None:
        print(f"{parser.prog}: error: gcloud not found on PATH (install the Google Cloud "
              f"CLI, or use --dry-run)",
              file=sys.stderr)
        return 1
    if watching:
        try:
            return recovery.drive(recovery.Recovery(args.retries), plan, describe_argv, probe_argv,
                                  poll_seconds=args.poll_seconds, prog=parser.prog, log=_log)
        except KeyboardInterrupt:
            _log(f"{parser.prog}: interrupted: the job keeps running on the workers; the same command "
                 f"watches it again")
            return 130
    if prepare is not None:
        prepare()
    for argv_ in commands:
        rc = gc.run(argv_, parser.prog)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
