"""The gcloud side of tpu/launch.py: arguments and defaults, `gcloud compute tpus` argv lists, and
running them (standard library only, like launch.py).

Every function here builds argv lists from the parsed arguments; `run` and `capture` are the only
places that start a process.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

# Runtime (software) versions per TPU generation, from the Cloud TPU docs; override with --version.
RUNTIME_VERSIONS = {
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
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
NOT_FOUND = "NOT_FOUND"  # the state `describe_state` reports for a resource that does not exist
UNKNOWN = "UNKNOWN"  # ... and for a describe that failed otherwise (network, auth)


class UsageError(Exception):
    """A missing or inconsistent argument: one line on stderr, exit code 2."""


def env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def require(args, *fields: str) -> None:
    for f in fields:
        if getattr(args, f, None) in (None, ""):
            flag = "--" + f.replace("_", "-")
            var = ENV_OF.get(f)
            hint = f" (or set {var})" if var else ""
            raise UsageError(f"{flag} is required{hint}")


def normalize_accelerator(acc: str) -> str:
    """`v5e-N` is spelled `v5litepod-N` in the TPU API; everything else is passed through."""
    m = re.fullmatch(r"v5e-(\d+)", acc)
    return f"v5litepod-{m.group(1)}" if m else acc


def default_runtime(acc: str) -> str:
    family = acc.rsplit("-", 1)[0]
    if family not in RUNTIME_VERSIONS:
        raise UsageError(f"--version is required for accelerator type {acc!r} (no default runtime known)")
    return RUNTIME_VERSIONS[family]


def location(args) -> list[str]:
    return [f"--zone={args.zone}", f"--project={args.project}"]


def multislice(args) -> bool:
    return int(args.slices) > 1


def queued(args) -> bool:
    return bool(args.queued) or multislice(args)


def kind(args) -> str:
    """The gcloud resource group of the TPU: `queued-resources` or `tpu-vm`."""
    return "queued-resources" if queued(args) else "tpu-vm"


def ssh(args, command: str, worker: str = "all", node: str | None = None) -> list[str]:
    """`gcloud ... ssh` running `command` on the workers (all nodes of a multislice queued resource)."""
    if multislice(args):
        argv = ["gcloud", "compute", "tpus", "queued-resources", "ssh", args.name, *location(args),
                f"--node={node if node is not None else 'all'}", f"--worker={worker}"]
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *location(args),
                f"--worker={worker}"]
    if args.internal_ip:
        argv.append("--internal-ip")
    return argv + [f"--command={command}"]


def scp(args, local: str, remote: str) -> list[str]:
    """Copy a local file to every worker (every node of a multislice queued resource)."""
    if multislice(args):
        argv = ["gcloud", "compute", "tpus", "queued-resources", "scp", local, f"{args.name}:{remote}",
                *location(args), "--node=all", "--worker=all"]
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{args.name}:{remote}",
                *location(args), "--worker=all"]
    if args.internal_ip:
        argv.append("--internal-ip")
    return argv


def create(args) -> list[str]:
    require(args, "project", "zone", "name", "accelerator_type")
    acc = normalize_accelerator(args.accelerator_type)
    version = args.version or default_runtime(acc)
    if args.spot and args.preemptible:
        raise UsageError("--spot and --preemptible are exclusive (Spot is the newer of the two)")
    if queued(args):
        if args.preemptible:
            raise UsageError("--preemptible is not a queued-resources option; use --spot")
        argv = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, *location(args),
                f"--accelerator-type={acc}", f"--runtime-version={version}"]
        if multislice(args):
            argv += [f"--node-count={int(args.slices)}", f"--node-prefix={args.name}"]
        else:
            argv.append(f"--node-id={args.name}")
    else:
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *location(args),
                f"--accelerator-type={acc}", f"--version={version}"]
    if args.spot:
        argv.append("--spot")
    if args.preemptible:
        argv.append("--preemptible")
    return argv + list(args.extra_arg)


def delete(args, yes: bool) -> list[str]:
    require(args, "project", "zone", "name")
    argv = ["gcloud", "compute", "tpus", kind(args), "delete", args.name, *location(args)]
    if queued(args):
        argv.append("--force")  # also deletes the queued resource's nodes
    return argv + (["--quiet"] if yes else [])


def describe(args, state_only: bool = False) -> list[str]:
    """`describe`; with `state_only` it prints just the state word (a queued resource keeps it in
    `state.state`, a TPU VM in `state`)."""
    require(args, "project", "zone", "name")
    argv = ["gcloud", "compute", "tpus", kind(args), "describe", args.name, *location(args)]
    if state_only:
        argv.append("--format=value(state.state)" if queued(args) else "--format=value(state)")
    return argv


def list_(args) -> list[str]:
    require(args, "project", "zone")
    return ["gcloud", "compute", "tpus", kind(args), "list", *location(args)]


# ----------------------------------------------------------------------------------------------
# running


def run(argv: list[str], prog: str) -> int:
    """Run one command with the terminal attached; a failure is reported on stderr, not raised."""
    print(f"+ {shlex.join(argv)}", file=sys.stderr)
    rc = subprocess.run(argv).returncode
    if rc != 0:
        print(f"{prog}: error: exit code {rc} from: {shlex.join(argv[:6])} ...", file=sys.stderr)
    return rc


def capture(argv: list[str]) -> subprocess.CompletedProcess:
    """Run one command and keep its output (describe and the worker probe are parsed, not shown)."""
    return subprocess.run(argv, capture_output=True, text=True)


def parse_state(done: subprocess.CompletedProcess) -> str:
    """The state word of a `describe --format=value(...)` run: NOT_FOUND when the resource does not
    exist, UNKNOWN when describe failed for another reason or printed nothing."""
    if done.returncode != 0:
        text = f"{done.stdout}\n{done.stderr}"
        return NOT_FOUND if re.search(r"NOT_FOUND|not found|was not found", text) else UNKNOWN
    words = done.stdout.split()
    return words[-1].upper() if words else UNKNOWN
