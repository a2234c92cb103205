"""Mutation testing (`make mutate`): each curated bug of tools/mutations/ must fail its tests.

The repository (tracked and untracked-but-not-ignored files) is snapshotted once into a temporary
directory; every mutation runs on its own copy of that snapshot, so the working tree is never
modified. In the copy the mutation's snippet is replaced and its tests run with
`python -m pytest -q -x -p no:cacheprovider -m "slow or not slow" <node ids>` (cwd and PYTHONPATH =
the copy, so the copy's jaxorder is imported). Before the mutants, the union of their tests must
pass on the unmutated snapshot (`--no-baseline` skips this), or a KILLED verdict would mean nothing.

    python tools/mutate.py [--only ID[,ID]] [--list] [-j N] [--timeout SECONDS] [--no-baseline] [-v]

Exit status: 0 if every mutation was KILLED, 1 if one SURVIVED, was NOT APPLIED (its snippet is
not exactly once in the file: the list needs updating) or its tests could not run (ERROR), 2 if
the baseline failed or the arguments are wrong.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a directory of scripts, not a package
from mutations import MUTATIONS, Mutation

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", "build"}  # fallback without git
KILLED, SURVIVED, NOT_APPLIED, ERROR, TIMEOUT = "KILLED", "SURVIVED", "NOT APPLIED", "ERROR", "TIMEOUT"
PYTEST_ERRORS = (3, 4, 5)  # internal error, usage error (e.g. a node id not found), no tests collected


@dataclass
class Result:
    mutation: Mutation
    status: str
    seconds: float
    detail: str = ""  # why NOT APPLIED / ERROR, or the pytest summary line
    failures: str = ""  # pytest's FAILED and "E " lines: what killed the mutant


def repo_files(root: Path) -> list[str]:
    """Relative paths of the files a copy needs: git's tracked + untracked-not-ignored files."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, check=True, capture_output=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked archive)
        names = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts)]
    return [n for n in names if (root / n).is_file()]  # tracked files deleted in the work tree drop out


def snapshot(root: Path, dest: Path) -> None:
    for name in repo_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply(mutation: Mutation, root: Path) -> str | None:
    """Applies the mutation inside `root`; returns why it cannot be applied, None when applied."""
    path = root / mutation.path
    if not path.is_file():
        return f"{mutation.path} does not exist"
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        return f"snippet found {count} times in {mutation.path} (must be exactly once)"
    path.write_text(text.replace(mutation.original, mutation.replacement))
    return None


def test_env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_pytest(root: Path, tests: list[str], timeout: float) -> tuple[int | None, str]:
    """(pytest exit code or None on timeout, combined output) of the tests run inside `root`."""
    # explicit node ids must run even when marked slow (pyproject's addopts deselect those)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "slow or not slow",
           *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=test_env(root), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out
    return proc.returncode, proc.stdout + proc.stderr


def summary_line(output: str) -> str:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_mutation(mutation: Mutation, base: Path, work: Path, timeout: float) -> Result:
    started = time.monotonic()
    copy = work / mutation.id
    shutil.copytree(base, copy, symlinks=True)
    try:
        reason = apply(mutation, copy)
        if reason:
            return Result(mutation, NOT_APPLIED, time.monotonic() - started, reason)
        code, output = run_pytest(copy, list(mutation.tests), timeout)
        seconds = time.monotonic() - started
        if code is None:  # a mutant that hangs its tests is caught, but say so
            return Result(mutation, TIMEOUT, seconds, f"tests still running after {timeout:.0f} s")
        if code in PYTEST_ERRORS:
            return Result(mutation, ERROR, seconds, f"pytest exit {code}: {output.strip()[-2000:]}")
        failures = "\n".join(ln for ln in output.splitlines() if ln.startswith(("FAILED", "ERROR", "E ")))
        return Result(mutation, SURVIVED if code == 0 else KILLED, seconds, summary_line(output), failures)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def baseline(base: Path, mutations: list[Mutation], timeout: float) -> bool:
    """The copy imports its own jaxorder, and the selected mutations' tests pass on unmutated code."""
    probe = subprocess.run([sys.executable, "-c", "import jaxorder; print(jaxorder.__file__)"], cwd=base,
                           env=test_env(base), capture_output=True, text=True, check=False)
    where = probe.stdout.strip()
    if probe.returncode or not Path(where).resolve().is_relative_to(base.resolve()):
        print(f"baseline: the copy imports jaxorder from {where or probe.stderr.strip()}, not from {base}",
              file=sys.stderr)
        return False
    tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
    print(f"baseline: {len(tests)} tests on the unmutated copy ...", flush=True)
    started = time.monotonic()
    code, output = run_pytest(base, tests, timeout)
    print(f"baseline: {summary_line(output)} ({time.monotonic() - started:.0f} s)", flush=True)
    if code != 0:
        print(output[-4000:], file=sys.stderr)
        print("baseline failed: fix these tests before judging mutants (or pass --no-baseline)",
              file=sys.stderr)
        return False
    return True


def short_test(node: str) -> str:
    return node.removeprefix("tests/")


def print_table(results: list[Result]) -> None:
    rows = [(r.status, f"{r.seconds:.1f}", r.mutation.id, r.mutation.path,
             r.mutation.description, ", ".join(short_test(t) for t in r.mutation.tests)) for r in results]
    header = ("result", "seconds", "mutation", "file", "change", "tests")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5])


def list_mutations(mutations: list[Mutation]) -> None:
    for m in mutations:
        print(f"{m.id}  ({m.path})\n  {m.description}\n  - {m.original}\n  + {m.replacement}")
        for t in m.tests:
            print(f"  test: {t}")


def select(only: str | None) -> list[Mutation]:
    """All mutations, or those named by --only (ValueError for an unknown or empty selection)."""
    if only is None:
        return list(MUTATIONS)
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    known = {m.id: m for m in MUTATIONS}
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown mutation id(s): {', '.join(unknown) or repr(only)}; see --list")
    return [known[w] for w in dict.fromkeys(wanted)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="ID[,ID]", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="parallel workers (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on unmutated code")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print what killed each mutant (pytest's FAILED and E lines)")
    args = parser.parse_args(argv)
    try:
        mutations = select(args.only)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.list:
        list_mutations(mutations)
        return 0
    if args.jobs < 1:
        print("-j must be >= 1", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="jaxorder-mutate-") as tmp:
        base, work = Path(tmp) / "base", Path(tmp) / "work"
        snapshot(REPO, base)
        work.mkdir()
        if not args.no_baseline and not baseline(base, mutations, args.timeout):
            return 2
        lock = threading.Lock()

        def one(mutation: Mutation) -> Result:
            result = run_mutation(mutation, base, work, args.timeout)
            with lock:  # one progress line per finished mutation
                print(f"{result.status:<11} {result.seconds:6.1f}s  {mutation.id}  {result.detail[:200]}",
                      flush=True)
                if args.verbose and result.failures:  # to check a mutant dies for the intended reason
                    print("    " + "\n    ".join(result.failures.splitlines()[:40]), flush=True)
            return result

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(one, mutations))

    print()
    print_table(results)
    failed = [r for r in results if r.status not in (KILLED, TIMEOUT)]
    for r in failed:
        if r.status in (NOT_APPLIED, ERROR):
            print(f"\n{r.status} {r.mutation.id}: {r.detail}", file=sys.stderr)
    counts = {s: sum(r.status == s for r in results) for s in (KILLED, TIMEOUT, SURVIVED, NOT_APPLIED, ERROR)}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
