"""Sample quality: diversity (unigram entropy) and generative NLL under a judge run.

For ``jaxorder eval --generate`` (``generation_quality``):
- ``unigram_entropy_bits(samples)``: entropy in bits of the pooled unigram distribution of all
  samples' tokens (token-id sequences; a ``str`` counts its UTF-8 bytes). Low = repetitive.
- ``judge_nll(samples, judge_run_dir)``: the samples' texts re-tokenized with the judge's
  tokenizer and scored exactly by the judge's objective nll (a run whose Objective has ``judge``:
  the exact left-to-right likelihood of l2r runs; generative NLL), reported in
  bits per UTF-8 byte like the training yardstick. A sample longer than the judge's
  ``data.seq_len`` is cut into consecutive windows of that length, each scored from BOS (as the
  yardstick scores validation windows). Lower = more plausible to the judge; note that
  degenerate repetitive text also scores low, so read it together with the entropy.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import config as config_lib
from jaxorder import objectives, sampling
from jaxorder.config import Config, ConfigError
from jaxorder.data.multiply import product_accuracy
from jaxorder.data.synthetic import grid_conflicts, is_valid_grid
from jaxorder.evaluation.commit_order import plot_commit_orders
from jaxorder.evaluation.runs import load_params, run_tokenizer, sample_run


def _ids(sample: Any) -> np.ndarray:
    if isinstance(sample, str):
        return np.frombuffer(sample.encode("utf-8"), np.uint8).astype(np.int64)
    return np.asarray(sample).reshape(-1)


def unigram_entropy_bits(samples: Iterable[Any], exclude: Sequence[int] = ()) -> float:
    """Entropy (bits) of the unigram distribution of all tokens of ``samples`` pooled; ids in
    ``exclude`` (e.g. PAD/EOS) are ignored. 0.0 when there are no tokens."""
    counts: Counter = Counter()
    skip = set(int(e) for e in exclude)
    for s in samples:
        counts.update(int(t) for t in _ids(s) if int(t) not in skip)
    total = sum(counts.values())
    if not total:
        return 0.0
    p = np.array(list(counts.values()), np.float64) / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one symbol gives 0.0, not -0.0


def ratio_stderr(num_K: np.ndarray, den_K: np.ndarray) -> float:
    """Standard error of the pooled ratio sum(num) / sum(den) over K samples (delta method: the ratio
    estimator's variance), NaN for fewer than two samples. With equal denominators it is the usual
    standard error of the mean of num_k / den_k."""
    num_K, den_K = np.asarray(num_K, np.float64), np.asarray(den_K, np.float64)
    k = len(num_K)
    if k < 2 or den_K.sum() <= 0:
        return float("nan")
    ratio = num_K.sum() / den_K.sum()
    residual_K = num_K - ratio * den_K  # linearised deviations of each sample from the pooled ratio
    return float(math.sqrt((residual_K ** 2).sum() / (k * (k - 1))) / den_K.mean())


def judge_nll_params(params, cfg: Config, texts: Sequence[str], tokenizer: Any) -> dict:
    """``judge_nll`` with the judge already loaded (params, cfg, tokenizer)."""
    _require_judge(cfg)
    window = int(min(cfg.data.seq_len, cfg.model.max_len))
    chunks: dict[int, list[tuple[int, np.ndarray]]] = {}  # length -> [(sample index, tokens)]
    bytes_per_sample = np.zeros(len(texts), np.int64)
    for i, text in enumerate(texts):
        ids = np.asarray(tokenizer.encode(text), np.int32)
        bytes_per_sample[i] = len(text.encode("utf-8"))
        for s in range(0, len(ids), window):
            piece = ids[s:s + window]
            chunks.setdefault(len(piece), []).append((i, piece))
    judge_objective = objectives.of(cfg)
    score = jax.jit(lambda p, t: judge_objective.nll(p, {"tokens": t}, jax.random.key(0), cfg))
    nats = np.zeros(len(texts), np.float64)
    for _, items in sorted(chunks.items()):
        owners = np.array([i for i, _ in items])
        nll = np.asarray(score(params, jnp.asarray(np.stack([t for _, t in items]))), np.float64)
        np.add.at(nats, owners, nll)
    total_bytes = int(bytes_per_sample.sum())
    to_bits = 1.0 / math.log(2.0)
    per_sample = [float(n * to_bits / b) if b else None for n, b in zip(nats, bytes_per_sample)]
    return {"bpb": float(nats.sum() * to_bits / total_bytes) if total_bytes else float("nan"),
            "bpb_stderr": ratio_stderr(nats, bytes_per_sample) * to_bits,  # over samples
            "nll_nats": float(nats.sum()), "bytes": total_bytes, "samples": len(texts),
            "per_sample_bpb": per_sample, "window": window}


def _require_judge(cfg: Config) -> None:
    if not objectives.of(cfg).judge:
        judges = [o.name for o in objectives.all_objectives() if o.judge]
        raise ConfigError(f"the judge must be a run of {', '.join(judges)} (exact left-to-right NLL), "
                          f"not '{cfg.objective.name}'")


def judge_nll(samples: Sequence[str], judge_run_dir: str | Path) -> dict:
    """Generative NLL of sample texts under the newest checkpoint of a judge run, in bits/byte.

    Returns dict(bpb (all samples pooled: total NLL / total bytes), bpb_stderr (its standard error over
    samples, ``ratio_stderr``), nll_nats, bytes, samples,
    per_sample_bpb, window, judge, judge_step)."""
    judge_run_dir = Path(judge_run_dir)
    if (judge_run_dir / "config.yaml").is_file():  # fail fast on a run that cannot judge
        _require_judge(config_lib.load(judge_run_dir / "config.yaml"))
    cfg, params, step = load_params(judge_run_dir)
    result = judge_nll_params(params, cfg, list(samples), run_tokenizer(cfg, judge_run_dir))
    result.update({"judge": judge_run_dir.name, "judge_step": step})
    return result


def sudoku_grids_valid(texts: Sequence[str]) -> dict:
    """Valid-grid fraction and mean conflicts per grid (``grid_conflicts``: repeated or missing
    digits over the 27 units, 0 for a valid grid): every line of exactly 81 characters in the
    samples is a candidate grid.

    With data.seq_len=82 a window (and an unprompted sample) is one grid plus a newline, so each
    sample gives one candidate; partial lines at a window's edges are not counted."""
    lines = [line for t in texts for line in t.split("\n") if len(line) == 81]
    valid = sum(is_valid_grid(line) for line in lines)
    conflicts = [grid_conflicts(line) for line in lines]
    return {"grids": len(lines), "valid_grids": valid,
            "valid_grid_fraction": valid / len(lines) if lines else 0.0,
            "grid_conflicts": float(np.mean(conflicts)) if lines else 0.0}


def default_judge(run_dir: str | Path) -> Path | None:
    """The judge run (l2r) beside `run_dir` (e.g. in the same sweep) trained on the same data, if any."""
    run_dir = Path(run_dir)
    data = config_lib.load_saved(run_dir / "config.yaml").data
    for sibling in sorted(run_dir.parent.iterdir()):
        path = sibling / "config.yaml"
        if sibling == run_dir or not path.is_file():
            continue
        cfg = config_lib.load_saved(path)
        if objectives.of(cfg).judge and cfg.data == data and (sibling / "checkpoints").is_dir():
            return sibling
    return None


def generation_quality(run_dir: str | Path, *, num_samples: int = 16, sampler: str | None = None,
                       options: Mapping[str, Any] = {}, seed: int = 0,
                       judge: str | Path | None = None) -> dict:
    """`jaxorder eval --generate`: sample unprompted windows and measure their quality.

    `options` are explicit sampler settings; a sampler that takes `steps` defaults to the window
    length. Reports the sampler, its settings, steps and forward passes, its speed (generated
    tokens/s in steady state: a first untimed run compiles), the unigram entropy of the samples
    (diversity), their NLL under a judge run (`judge`, default: the l2r run beside this one on the
    same data; omitted if there is none), for Sudoku data the fraction of valid grids, for multiply
    data the fraction of complete sampled lines that are correct products, and for masked,
    block and any-order runs the AR-ness and commit distance of the order the sampler used
    (``evaluation.commit_order``), with a plot of it written to RUN_DIR/commit_order.png, and for
    masked and block runs the sampler's cumulative uncertainty per generated token
    (``uncertainty_per_token``: the summed entropy in nats of each committed position's
    distribution at the step that committed it, over all samples, / generated tokens)."""
    cfg = config_lib.load_saved(Path(run_dir) / "config.yaml")
    chosen = sampling.resolve(cfg, sampler)
    options = dict(options)
    if "steps" in chosen.options:
        options.setdefault("steps", cfg.data.seq_len)
    out = sample_run(run_dir, sampler=chosen.name, options=options, num_samples=num_samples, seed=seed,
                     warmup=True)
    texts = [s["text"] for s in out["samples"]]
    result = {"sampler": out["sampler"], "steps": out["steps"], "forward_passes": out["forward_passes"],
              "num_samples": num_samples, "tokens_per_s": out["generated_tokens"] / max(out["seconds"], 1e-9),
              "unigram_entropy_bits": unigram_entropy_bits(texts)}
    reported = ("draft_forward_passes", "accepted_per_round", "guide_forward_passes", "ar_ness",
                "commit_distance", "uncertainty_per_token")
    result.update({k: out[k] for k in reported if k in out})
    if "committed_at" in out["samples"][0]:  # what order the decoder used, for a few samples
        png = plot_commit_orders(np.array([s["committed_at"] for s in out["samples"]]),
                                 Path(run_dir) / "commit_order.png",
                                 f"{Path(run_dir).name}: {out['sampler']} commit order")
        result["commit_order_png"] = str(png)
    judge = Path(judge) if judge else default_judge(run_dir)
    if judge is not None:
        scored = judge_nll(texts, judge)
        result.update({"judge": scored["judge"], "judge_bpb": scored["bpb"],
                       "judge_bpb_stderr": scored["bpb_stderr"]})
    if cfg.data.source == "sudoku":
        result.update(sudoku_grids_valid(texts))
    if cfg.data.source == "multiply":
        result.update(product_accuracy(texts, cfg.data.multiply_reverse))
    return result
