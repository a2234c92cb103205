"""What the decoding benchmarks share: the run set-up, the rows they decode, timing, and the
quality numbers (judge bits/byte, unigram entropy, paired differences). Used by bench/decoding.py,
bench/decoding_confidence.py, bench/decoding_lengths.py, bench/decoding_long_prompts.py and the
benches that train a commit filter (end_of_text, learned_filter, sudoku)."""
from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from jaxorder.data import make_data
from jaxorder.evaluation.sample_quality import judge_nll_params, unigram_entropy_bits
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import traces

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "configs" / "sweeps" / "decoding.yaml"
LENGTH, PROMPT, BATCH, BLOCK = 256, 64, 8, 32


def machine_line() -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPU cores, "
            f"JAX {jax.__version__} ({jax.default_backend()}), load average {load}")


def ensure_runs(runs: Path, names: list[str], sweep: Path = SWEEP) -> None:
    missing = [n for n in names if not (runs / n / "checkpoints").is_dir()]
    if missing:
        print(f"training the missing runs {', '.join(missing)} with `jaxorder sweep {sweep.name}` ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "jaxorder.cli", "sweep", str(sweep), "--out", str(runs)],
                       check=True)


def unprompted(cfg, batch: int, length: int = LENGTH) -> np.ndarray:
    return np.full((batch, length), special_ids(cfg.model).mask, np.int32)


def prompted(cfg, windows: np.ndarray, length: int = LENGTH) -> np.ndarray:
    rows = np.full((len(windows), length), special_ids(cfg.model).mask, np.int32)
    rows[:, :PROMPT] = windows[:, :PROMPT]
    return rows


def prompt_windows(cfg, n: int) -> np.ndarray:
    """The first n validation windows of cfg's data (whole batches of ``data.batch_size``, so the first
    n never depend on n): the texts the prompted rows continue."""
    per_batch = cfg.data.batch_size
    batches = make_data(cfg.data).val_batches(-(-n // per_batch))
    return np.concatenate([np.asarray(b) for b in batches])[:n]


def record_confidence_traces(params, cfg, rows: np.ndarray, options, seed: int, path: Path, run: str) -> dict:
    """Traces of a `confidence` decode of `rows` (key `seed`, jaxorder.sampling.traces) written to
    `path`: {path, rows, label_rate, seconds}."""
    t0 = time.perf_counter()
    _, tr = traces.sample_and_record(params, cfg, rows, jax.random.key(seed), "confidence", options)
    header = traces.trace_header(tr, cfg, "confidence", options, rows.shape[1], len(rows), run=run, seed=seed)
    traces.save(path, tr, header)
    return {"path": str(path), "rows": header["rows"], "label_rate": header["label_rate"],
            "seconds": time.perf_counter() - t0}


def texts_of(out: dict, tokenizer) -> list[str]:
    tokens = np.asarray(out["tokens"])
    return [tokenizer.decode(t[t != tokenizer.pad_id]) for t in tokens]


def timed_call(fn, repeats: int) -> tuple[dict, float]:
    """(host outputs of the last call, median wall seconds) after one untimed compiling call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return jax.device_get(out), float(np.median(times))


BOOTSTRAP = 200


def quality(texts: list[str], judge) -> dict:
    jcfg, jparams, jtok = judge
    per = np.asarray(judge_nll_params(jparams, jcfg, texts, jtok)["per_sample_bpb"], np.float64)
    boot = [unigram_entropy_bits([texts[i] for i in idx]) for idx in bootstrap_indices(len(texts))]
    return {"judge_bpb": float(per.mean()), "judge_bpb_se": float(per.std(ddof=1) / math.sqrt(len(per))),
            "entropy": unigram_entropy_bits(texts), "entropy_se": float(np.std(boot, ddof=1)),
            "_per_sample": per, "_texts": texts}


def mean_se(x) -> tuple[float, float]:
    """(mean, standard error of the mean); the error is nan for fewer than two values."""
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def bootstrap_indices(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)  # the same resamples for every row: paired differences
    return [rng.integers(0, n, n) for _ in range(BOOTSTRAP)]


def paired_difference(row: dict, ref: dict) -> dict:
    """Judge bits/byte and unigram entropy of `row` minus `ref`, sample i against sample i (same seed
    and batch position), with standard errors: of the mean difference, and by a paired bootstrap."""
    d = row["_per_sample"] - ref["_per_sample"]
    boot = [unigram_entropy_bits([row["_texts"][i] for i in idx])
            - unigram_entropy_bits([ref["_texts"][i] for i in idx]) for idx in bootstrap_indices(len(d))]
    return {"d_judge": float(d.mean()), "d_judge_se": float(d.std(ddof=1) / math.sqrt(len(d))),
            "d_entropy": row["entropy"] - ref["entropy"], "d_entropy_se": float(np.std(boot, ddof=1))}
