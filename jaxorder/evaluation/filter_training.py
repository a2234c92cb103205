"""Training the commit filter of the learned sampler (`jaxorder train-filter RUN_DIR TRACES`).

Data: the rows of a trace file (``jaxorder.sampling.traces``), the features the filter reads
(``commit_filter.feature_matrix``; default all of ``commit_filter.FEATURES``), target ``label`` =
"the prediction equals the final token". Held out: a seeded 20% of the samples, whole (their rows
come from decodes the filter never saw); with a single sample, a seeded 20% of the rows.

Fit: the filter's MLP (``commit_filter``) with standardization from the training rows, the mean
logistic loss (optax.sigmoid_binary_cross_entropy) on minibatches of 1024 rows drawn with
replacement by the seeded key, AdamW (learning rate 3e-3, cosine decay to 10%, weight decay 1e-4).
The same traces and seed give the same arrays (tested).

Reported for the training rows, the held-out rows and optionally another trace file (``eval``, e.g.
recorded at another length and step budget: the transfer check): rows, base rate (share of label
1), log loss, accuracy at 0.5, AUC, and at each of REPORT_THRESHOLDS the share of rows the filter
accepts and the precision (accepted rows whose label is 1) and recall there. The summary goes into
the filter's YAML (``training``, ``traces``, ``metrics``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxorder import config as config_lib
from jaxorder import objectives
from jaxorder.config import ConfigError
from jaxorder.platform import progress
from jaxorder.sampling import commit_filter
from jaxorder.sampling import traces as trace_lib
from jaxorder.sampling.commit_filter import FEATURES, HIDDEN, feature_matrix, filter_logits

DEFAULT_STEPS = 2000
DEFAULT_HIDDEN = 64
BATCH = 1024
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
HELD_OUT = 0.2
REPORT_THRESHOLDS = (0.5, 0.7, 0.9, 0.95)
TRAINED = ("w0", "w1", "b1", "w2", "b2")  # mean and std are fixed by the training rows


def parse_features(text: str | None) -> tuple[str, ...]:
    """'confidence,margin,hidden' -> the names in FEATURES order (None: all)."""
    if not text:
        return FEATURES
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        raise ConfigError(f"unknown filter feature '{unknown[0] if unknown else text}'; features are: "
                          f"{', '.join(FEATURES)}")
    return tuple(f for f in FEATURES if f in names)


def design(traces: Mapping[str, np.ndarray], features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float32, labels [N] float32) of a trace."""
    x = feature_matrix(features, np.asarray(traces["scalars"], np.float32),
                       np.asarray(traces["hidden"], np.float32) if HIDDEN in features else None)
    return np.asarray(x, np.float32), np.asarray(traces["label"], np.float32)


def split(samples_N: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training row indices, held-out row indices): HELD_OUT of the samples, or of the rows."""
    rng = np.random.default_rng(seed)
    ids = np.unique(samples_N)
    if len(ids) >= 2:
        held = rng.permutation(ids)[:max(1, int(round(HELD_OUT * len(ids))))]
        mask = np.isin(samples_N, held)
    else:
        mask = np.zeros(len(samples_N), bool)
        mask[rng.permutation(len(samples_N))[:max(1, int(round(HELD_OUT * len(samples_N))))]] = True
    return np.nonzero(~mask)[0], np.nonzero(mask)[0]


def fit(x_NF: np.ndarray, y_N: np.ndarray, hidden_units: int, steps: int, seed: int,
        log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """The filter's arrays fitted to (x, y) as the module docstring says."""
    mean_F, std_F = commit_filter.standardization(x_NF)
    init_key, batch_key = jax.random.split(jax.random.key(seed))
    arrays = commit_filter.init_arrays(init_key, x_NF.shape[1], hidden_units, mean_F, std_F,
                                       float(y_N.mean()))
    fixed = {k: arrays[k] for k in ("mean", "std")}
    trained = {k: arrays[k] for k in TRAINED}
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, steps, alpha=0.1)
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    x, y = jnp.asarray(x_NF), jnp.asarray(y_N)

    def loss_fn(p, xb, yb):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(filter_logits({**fixed, **p}, xb), yb))

    @jax.jit
    def update(p, opt_state, step):
        idx = jax.random.randint(jax.random.fold_in(batch_key, step), (BATCH,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = optimizer.init(trained)
    every = max(steps // 10, 1)
    with progress.Bar(steps, "train-filter", unit="step") as bar:
        for step in range(steps):
            trained, opt_state, loss = update(trained, opt_state, step)
            bar.update()
            if log and ((step + 1) % every == 0 or step + 1 == steps):
                log(f"train-filter: step {step + 1}/{steps}: batch loss {float(loss):.4f}")
    return {k: np.asarray(v, np.float32) for k, v in {**fixed, **trained}.items()}


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both labels."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based average ranks
    return float((rank[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def metrics(arrays: Mapping[str, np.ndarray], x_NF: np.ndarray, y_N: np.ndarray) -> dict:
    """The module docstring's numbers for rows (x, y)."""
    logit = np.asarray(jax.jit(filter_logits)(dict(arrays), jnp.asarray(x_NF)), np.float64)
    prob = 1.0 / (1.0 + np.exp(-logit))
    label = y_N > 0.5
    loss = np.mean(np.logaddexp(0.0, logit) - label * logit)  # -log sigmoid(+-logit)
    out: dict[str, Any] = {"rows": int(len(label)), "base_rate": float(label.mean()), "log_loss": float(loss),
                           "accuracy": float(np.mean((prob >= 0.5) == label)), "auc": auc(prob, label)}
    for t in REPORT_THRESHOLDS:
        accepted = prob >= t
        hits = int(np.sum(accepted & label))
        out[f"at_{t:g}"] = {"accepted": float(accepted.mean()),
                            "precision": hits / int(accepted.sum()) if accepted.any() else None,
                            "recall": hits / int(label.sum()) if label.any() else None}
    return out


def _trace_summary(path: str | Path, header: Mapping[str, Any]) -> dict:
    keep = ("run", "run_step", "sampler", "options", "length", "samples", "rows", "label_rate", "seed")
    return {"path": str(path), **{k: header[k] for k in keep if k in header}}


def train_filter(run_dir: str | Path, traces_path: str | Path, *, out: str | Path | None = None,
                 seed: int = 0, steps: int = DEFAULT_STEPS, hidden: int = DEFAULT_HIDDEN,
                 features: str | None = None, eval_traces: str | Path | None = None,
                 log: Callable[[str], None] | None = progress.write) -> dict:
    """Fits a commit filter to a run's traces and writes RUN_DIR/commit_filter.{yaml,npz} (or `out`: a
    .yaml path or a directory); returns the summary written into the YAML, with the file's path."""
    run_dir = Path(run_dir)
    if steps < 1 or hidden < 0:
        raise ConfigError(f"--steps must be >= 1 and --hidden >= 0, got {steps} and {hidden}")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); train one with "
                          f"`jaxorder train`")
    cfg = config_lib.load_saved(run_dir / "config.yaml")
    if objectives.of(cfg).sampling != "masked":
        raise ConfigError(f"the commit filter serves masked-diffusion runs; {run_dir.name} is a "
                          f"{cfg.objective.name} run")
    names = parse_features(features)
    traces, header = trace_lib.load(traces_path)
    if HIDDEN in names and header["hidden_size"] != cfg.model.d_model:
        raise ConfigError(f"{traces_path} holds hidden states of size {header['hidden_size']}, "
                          f"{run_dir.name} has d_model={cfg.model.d_model}: record traces of this run")
    x_NF, y_N = design(traces, names)
    train_idx, held_idx = split(traces["sample"], seed)
    if len(np.unique(y_N[train_idx])) < 2:
        only = int(y_N[0]) if len(y_N) else "-"
        raise ConfigError(f"{traces_path}: the training rows all have label {only} ({len(train_idx)} rows); "
                          f"record more samples (--num-samples) or more steps")
    if log:
        log(f"train-filter: {len(train_idx)} training rows, {len(held_idx)} held out, base rate "
            f"{y_N.mean():.3f}, {x_NF.shape[1]} features")
    arrays = fit(x_NF[train_idx], y_N[train_idx], hidden, steps, seed, log)
    summary: dict[str, Any] = {
        "features": list(names), "hidden_size": int(cfg.model.d_model) if HIDDEN in names else 0,
        "hidden_units": int(hidden), "width": int(x_NF.shape[1]), "run": run_dir.name,
        "training": {"seed": seed, "steps": steps, "batch": BATCH, "learning_rate": LEARNING_RATE,
                     "weight_decay": WEIGHT_DECAY, "held_out_fraction": HELD_OUT},
        "traces": _trace_summary(traces_path, header),
        "metrics": {"train": metrics(arrays, x_NF[train_idx], y_N[train_idx]),
                    "held_out": metrics(arrays, x_NF[held_idx], y_N[held_idx])}}
    if eval_traces:
        other, other_header = trace_lib.load(eval_traces)
        summary["eval"] = {"traces": _trace_summary(eval_traces, other_header),
                           "metrics": metrics(arrays, *design(other, names))}
    target = Path(out) if out else run_dir / commit_filter.FILTER_FILE
    if target.suffix != ".yaml":
        target = target / commit_filter.FILTER_FILE
    path = commit_filter.save(target, arrays, _plain(summary))
    return {"filter": str(path), "weights": str(path.with_suffix(".npz")), **_plain(summary)}


def _plain(value: Any) -> Any:
    """YAML-safe copy: numpy scalars to Python numbers, NaN to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The summary in a few lines: held-out (and eval) metrics, the files written."""
    lines = []
    parts = [("held out", summary["metrics"]["held_out"])]
    if "eval" in summary:
        parts.append((f"eval ({summary['eval']['traces']['path']})", summary["eval"]["metrics"]))
    for name, m in parts:
        at = m["at_0.9"]
        auc_text = f"{m['auc']:.3f}" if m["auc"] is not None else "-"
        precision = f"{at['precision']:.3f}" if at["precision"] is not None else "-"
        lines.append(f"{name}: {m['rows']} rows, base rate {m['base_rate']:.3f}, accuracy "
                     f"{m['accuracy']:.3f}, AUC {auc_text}, log loss {m['log_loss']:.4f}; at 0.9: accepts "
                     f"{at['accepted']:.3f}, precision {precision}")
    lines.append(f"wrote {summary['filter']} and {summary['weights']}")
    return lines


def add_command(sub) -> None:
    """`jaxorder train-filter` on the CLI's subcommands (argparse; kept here beside what it runs)."""
    p = sub.add_parser("train-filter", help="fit the learned sampler's commit filter to decoding traces",
                       description="Fit the commit filter of the learned sampler (an MLP on the model's "
                                   "final hidden state and confidence, margin, entropy and progress "
                                   "features) to traces of `jaxorder sample RUN_DIR --record-traces PATH`, "
                                   "predicting 'this position's prediction equals its final token'; write "
                                   "RUN_DIR/commit_filter.yaml and commit_filter.npz, which `jaxorder sample "
                                   "RUN_DIR --sampler learned` reads.")
    p.add_argument("run_dir", help="the mdm run directory the traces were recorded from")
    p.add_argument("traces", help="a trace file (.npz) of `jaxorder sample RUN_DIR --record-traces PATH`")
    p.add_argument("--out", help="the filter's .yaml path or a directory (default "
                                 "RUN_DIR/commit_filter.yaml)")
    p.add_argument("--seed", type=int, default=0,
                   help="initialization, held-out split and batches (default 0)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"AdamW steps (default {DEFAULT_STEPS})")
    p.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN,
                   help=f"hidden ReLU units (default {DEFAULT_HIDDEN}; 0 = logistic regression)")
    p.add_argument("--features", help=f"comma list of the features read (default all: {','.join(FEATURES)})")
    p.add_argument("--eval-traces", metavar="PATH",
                   help="also report the filter's metrics on these traces (e.g. recorded at another "
                        "length and step budget)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    summary = train_filter(args.run_dir, args.traces, out=args.out, seed=args.seed, steps=args.steps,
                           hidden=args.hidden, features=args.features, eval_traces=args.eval_traces)
    print(json.dumps(summary, allow_nan=False) if args.json else "\n".join(summary_lines(summary)))
    return 0
