"""The report page of `jaxorder study`: DIR/report.md with when, where and at which commit it was made,
every sweep's own results.md (its tables and figures; the PNGs copied to DIR/figures/<sweep>/ so the
page works wherever DIR is moved), and every analysis's key numbers and figures (relative links into
DIR/analysis/)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Protocol, Sequence

from jaxorder.config import ConfigError
from jaxorder.experiments.analysis.ablation import ablation_text
from jaxorder.experiments.analysis.outputs import SUMMARY_ROWS

REPO = Path(__file__).resolve().parents[2]


class AnalysisEntry(Protocol):  # jaxorder.experiments.study.Analysis
    sweep: str
    run: str
    kind: str
    flags: tuple[str, ...]

    def out_dir(self, study_dir: Path) -> Path: ...

    def main_file(self, study_dir: Path) -> Path: ...


def _run(argv: list[str]) -> str | None:
    """stdout of a short command, None when it cannot run or fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def machine() -> str:
    """CPU model (lscpu's model name, else platform.processor()), architecture, core count, OS."""
    model = next((line.split(":", 1)[1].strip() for line in (_run(["lscpu"]) or "").splitlines()
                  if line.startswith("Model name:")), "") or platform.processor() or "unknown CPU"
    return (f"{model} ({platform.machine()}), {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}")


def git_commit(repo: Path = REPO) -> str:
    head = _run(["git", "-C", str(repo), "rev-parse", "HEAD"])
    if not head:
        return "unknown (not a git checkout)"
    dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return head.strip() + (" (with uncommitted changes)" if dirty else "")


def _num(x, fmt: str = "{:.4f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def sweep_section(name: str, sweep_dir: Path, study_dir: Path) -> str:
    """The sweep's results.md, headings one level down, its figures copied to figures/<name>/ and
    linked there."""
    results = Path(sweep_dir) / "results.md"
    if not results.is_file():
        raise ConfigError(f"no results.md in {sweep_dir}; run `jaxorder sweep` for {name} first")
    figures = Path(study_dir) / "figures" / name
    figures.mkdir(parents=True, exist_ok=True)
    for png in sorted(Path(sweep_dir).glob("*.png")):
        shutil.copy2(png, figures / png.name)
    text = re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"](figures/{name}/{m.group(1)})", results.read_text())
    return re.sub(r"^(#+ )", r"#\1", text, flags=re.M)


def mixtures_numbers(d: dict) -> str:
    rows = [f"| {k} | {r['mean']:.4f} | {_num(r['stderr'])} |" for k, r in d["bound_nats_per_token"].items()]
    eff, tau = d["effective_orders"], d["best_order_kendall_tau"]
    return (f"Checkpoint step {d['step']}; {d['windows']} validation windows of {d['length']} tokens, "
            f"{d['orders']} random orders each. The K-order bound -log mean_k p(x | σ_k) per token "
            f"(mean ± s.e. over windows):\n\n| K | bound (nats/token) | ± s.e. |\n|---|---|---|\n"
            + "\n".join(rows) + "\n\n"
            f"- effective number of orders exp(H(w)) over the {d['orders']} orders: {eff['mean']:.3f} ± "
            f"{_num(eff['stderr'], '{:.3f}')}\n"
            f"- Kendall tau of the best order to left to right (+1 l2r, -1 r2l): {tau['mean']:.3f} ± "
            f"{_num(tau['stderr'], '{:.3f}')}\n")


def loss_profile_numbers(d: dict) -> str:
    out = [f"Checkpoint step {d['step']}; {d['windows']} validation windows.\n"]
    if d.get("by_mask_rate"):
        out += ["NLL per masked token by mask rate t (nats; unweighted by 1/t):\n",
                "| t | pairs | masked tokens | NLL | ± s.e. |", "|---|---|---|---|---|"]
        out += [f"| {r['t_lo']:.2f}-{r['t_hi']:.2f} | {r['pairs']} | {r['masked_tokens']} | "
                f"{_num(r['nll'])} | {_num(r['nll_stderr'])} |" for r in d["by_mask_rate"]]
        out.append("")
    if d.get("by_position"):
        out += ["NLL by position (nats), per curve: its sum over the window, the mean per token, and the "
                "first and last position:\n",
                "| curve | sequence NLL | per token | first position | last position |",
                "|---|---|---|---|---|"]
        for name, c in d["by_position"].items():
            mean = c["mean"]
            out.append(f"| {name} | {c['sequence_nll']:.3f} | {c['sequence_nll'] / len(mean):.4f} | "
                       f"{mean[0]:.4f} ± {c['stderr'][0]:.4f} | {mean[-1]:.4f} ± {c['stderr'][-1]:.4f} |")
        out.append("")
    return "\n".join(out)


def grad_snr_numbers(d: dict) -> str:
    steps = sorted(d["by_step"].items(), key=lambda kv: int(kv[0]))
    ts = next(([x["t"] for x in r["by_mask_rate"]] for _, r in steps if r.get("by_mask_rate")), [])
    header = ["step", "batches", "SNR (training loss)", "‖mean g‖", "rms spread", *(f"t={t:.2f}" for t in ts)]
    lines = [f"Gradient SNR = ‖mean g‖ / rms spread over per-batch gradients (batches of {d['batch_size']} "
             f"windows); the t columns fix every sequence's mask rate at t.\n",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for step, r in steps:
        loss = r["loss"]
        by_t = [_num(x["snr"], "{:.3f}") for x in r.get("by_mask_rate") or []]
        lines.append(f"| {step} | {loss['batches']} | {_num(loss['snr'], '{:.3f}')} | "
                     f"{loss['mean_norm']:.4g} | {loss['spread']:.4g} | "
                     + " | ".join(by_t + [""] * (len(ts) - len(by_t))) + " |")
    return "\n".join(lines) + "\n"


def attention_numbers(d: dict, top: int = 3) -> str:
    s = d["summary"]
    lines = [f"{d['run']} ({d['objective']}, {d['inputs']} inputs):\n", "| measure | value |", "|---|---|"]
    threshold = f" (>= {s['slash_threshold']:g})"
    lines += [f"| {label}{threshold if key == 'slash_dominant_fraction' else ''} | {fmt.format(s[key])} |"
              for key, label, fmt in SUMMARY_ROWS]
    heads = sorted(d["heads"], key=lambda h: -h["dominant_score"])[:top]
    lines += ["", f"Top {len(heads)} heads by best Δ ≠ 0 slash score:", ""]
    lines += [f"- L{h['layer']}H{h['head']}: Δ = {h['dominant_offset']:+d}, score {h['dominant_score']:.3f}, "
              f"self {h['self_score']:.3f}, rank-one Q {h['rank1_q']:.3f} K {h['rank1_k']:.3f}"
              for h in heads]
    if "ablation" in d:
        lines += ["", "```", ablation_text(d["ablation"]).rstrip(), "```"]
    return "\n".join(lines) + "\n"


NUMBERS = {"mixtures": mixtures_numbers, "loss-profile": loss_profile_numbers, "grad-snr": grad_snr_numbers,
           "attention": attention_numbers}


def analysis_section(a: AnalysisEntry, study_dir: Path) -> str:
    """Heading, the command, the key numbers from the analysis's JSON, and its PNGs."""
    study_dir = Path(study_dir)
    data = json.loads(a.main_file(study_dir).read_text())
    figures = "".join(f"![{png.stem}]({png.relative_to(study_dir).as_posix()})\n"
                      for png in sorted(a.out_dir(study_dir).glob("*.png")))
    command = " ".join(["jaxorder analyze", a.kind, f"{a.sweep}/{a.run}", *a.flags])
    return (f"### {a.kind}: {a.sweep}/{a.run}\n\n`{command}` (outputs in "
            f"`{a.out_dir(study_dir).relative_to(study_dir)}/`)\n\n{NUMBERS[a.kind](data)}\n{figures}")


def write_page(name: str, study_path: Path, sweep_names: Sequence[str], analyses: Sequence[AnalysisEntry],
               study_dir: Path, sweeps_dir: Path) -> Path:
    study_dir = Path(study_dir)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    contents = [f"- [sweep {s}](#sweep-{s})" for s in sweep_names]
    parts = [f"# Study {name}\n\n"
             f"- date: {now}\n- machine: {machine()}\n- git commit: {git_commit()}\n"
             f"- study file: `{study_path}`; sweeps in `{sweeps_dir}`\n\n"
             f"Sweeps: {', '.join(sweep_names)}. Analyses: {len(analyses)}. Every number below is read "
             f"from the sweeps' results and the analyses' JSON files.\n\n" + "\n".join(contents) + "\n"]
    parts += [sweep_section(s, Path(sweeps_dir) / s, study_dir) for s in sweep_names]
    if analyses:
        parts.append("## Analyses\n")
        parts += [analysis_section(a, study_dir) for a in analyses]
    page = study_dir / "report.md"
    page.write_text("\n".join(parts))
    return page
