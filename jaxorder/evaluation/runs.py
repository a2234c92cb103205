"""Finished run directories: the newest checkpoint's config and params, their evaluation
(`jaxorder eval`) and sampling (`jaxorder sample`); sweeps and analysis read runs through here."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxorder import config as config_lib
from jaxorder import objectives, sampling
from jaxorder.config import Config, ConfigError
from jaxorder.data import ByteTokenizer, make_data
from jaxorder.data.run_tokenizer import require_same_tokenizer, saved_tokenizer
from jaxorder.evaluation.commit_order import order_stats
from jaxorder.evaluation.fixed_orders import parse_orders, score_orders
from jaxorder.evaluation.yardstick import evaluate
from jaxorder.model.attention import settle_model_config
from jaxorder.paths import as_path, is_url
from jaxorder.sampling import traces as trace_lib
from jaxorder.sampling.prompts import build_inputs
from jaxorder.training.checkpoint import Checkpointer, require_checkpoint
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import make_placement


def load_params(run_dir: str | os.PathLike, step: int | None = None) -> tuple[Config, Any, int]:
    """Config, params and step of a run's newest readable checkpoint, or of checkpoint `step`
    (for eval and analysis)."""
    run_dir = epath.Path(run_dir)
    ckpt_dir = require_checkpoint(run_dir)
    cfg = config_lib.load_saved(run_dir / "config.yaml")
    cfg = dataclasses.replace(cfg, model=settle_model_config(cfg.model))
    optimizer = make_optimizer(cfg)
    try:
        placement = make_placement(cfg, optimizer)
    except ConfigError:  # trained on another mesh: evaluate data-parallel on the devices here
        cfg = dataclasses.replace(cfg, mesh=config_lib.MeshConfig(rules=cfg.mesh.rules))
        placement = make_placement(cfg, optimizer)
    ckpt = Checkpointer(ckpt_dir, cfg.train.max_to_keep, async_save=False)
    try:
        if step is None:
            restored = ckpt.restore_latest(placement.abstract_state(cfg, optimizer))
        elif step not in ckpt.steps():
            raise ConfigError(f"{ckpt_dir} has no checkpoint at step {step}; it has {ckpt.steps()}")
        else:
            restored = step, ckpt.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(placement.abstract_state(cfg, optimizer))))["state"]
    finally:
        ckpt.close()
    if restored is None:
        raise ConfigError(f"no readable checkpoint in {ckpt_dir}; re-train with `jaxorder train`")
    step, state = restored
    return cfg, state["params"], step


def checkpoint_steps(run_dir: str | os.PathLike) -> list[int]:
    """The steps of a run's kept checkpoints, oldest first."""
    ckpt = Checkpointer(require_checkpoint(epath.Path(run_dir)), 10**9, async_save=False)  # reads only
    try:
        return ckpt.steps()
    finally:
        ckpt.close()


def eval_run(run_dir: str | os.PathLike, orders: str | None = None, max_windows: int | None = None) -> dict:
    """Evaluates a run directory's newest checkpoint on the validation windows.

    `orders` (e.g. 'l2r,r2l,random:8,greedy') adds exact fixed-order scores of an mdm, ao_ar or
    latent_order model under result["orders"]; `max_windows` is the number of windows used for them
    (fewer when the validation split has fewer).
    """

    specs = parse_orders(orders) if orders else []
    cfg, params, step = load_params(run_dir)
    data = make_data(cfg.data, jax.process_index(), jax.process_count())
    require_same_tokenizer(run_dir, data.tokenizer, cfg)
    val_batches = data.val_batches(cfg.eval.batches)
    result = evaluate(params, cfg, val_batches, data.val_bytes_per_token, extras=True)
    result.update({"run": epath.Path(run_dir).name, "step": step})
    if specs:
        if max_windows:  # more windows than eval.batches hold when asked (as many as the split has)
            wanted = -(-max_windows // len(val_batches[0]))
            if wanted > len(val_batches):
                val_batches = data.val_batches(wanted)
            val_batches = _first_windows(val_batches, max_windows)
        result["orders"] = score_orders(params, cfg, val_batches, data.val_bytes_per_token, specs,
                                        cfg.eval.seed)
        # the yardstick on the same windows
        same = evaluate(params, cfg, val_batches, data.val_bytes_per_token)
        result["orders"]["yardstick"] = {k: same[k] for k in ("bpb", "bpb_stderr", "kind", "windows")}
    return result


def _first_windows(batches: list, count: int) -> list:
    out, left = [], count
    for b in batches:
        if left <= 0:
            break
        out.append(b[:left])
        left -= len(out[-1])
    return out


def run_tokenizer(cfg: Config, run_dir: str | os.PathLike | None = None) -> Any:
    """The tokenizer the run was trained with: its saved tokenizer.json when `run_dir` is given,
    else rebuilt from the config (the byte tokenizer needs no data; a BPE is learned again)."""
    if run_dir is not None:
        return saved_tokenizer(run_dir, cfg)
    return ByteTokenizer() if cfg.data.tokenizer == "byte" else make_data(cfg.data).tokenizer


def _timed(run, warmup: bool) -> tuple[Any, float]:
    """(run(), seconds); with `warmup` a first untimed call compiles (run must return host values)."""
    if warmup:
        run()
    started = time.perf_counter()
    out = run()
    return out, time.perf_counter() - started


def companion_dirs(sampler: sampling.Sampler, options: Mapping[str, Any],
                   base: str | os.PathLike | None = None) -> dict[str, str]:
    """The run directories named by the sampler's companion options (e.g. the speculative draft) that
    are set in `options`; a relative one is taken relative to `base` when given (a sweep's output
    directory), else to the working directory."""
    dirs = {}
    for name in sampler.companions:
        value = options.get(name)
        if value:
            relative = base is not None and not is_url(value) and not Path(value).is_absolute()
            dirs[name] = str(Path(base) / value) if relative else value
    return dirs


def load_companions(sampler: sampling.Sampler,
                    opts: sampling.SamplerOptions) -> dict[str, sampling.Companion]:
    """The runs the sampler reads besides the sampled one, loaded (newest checkpoint each)."""
    loaded = {}
    for name in sampler.companions:
        path = getattr(opts, name)
        if path:
            cfg, params, _ = load_params(path)
            loaded[name] = sampling.Companion(cfg, params, epath.Path(path).name)
    return loaded


def sample_run(run_dir: str | os.PathLike, *, sampler: str | None = None, options: Mapping[str, Any] = {},
               num_samples: int = 1, seed: int = 0, prompt: str | None = None, template: str | None = None,
               length: int | None = None, warmup: bool = False, record_traces: str | None = None,
               max_new_tokens: int | None = None) -> dict:
    """Samples `num_samples` sequences from a run's newest checkpoint; returns a JSON-able dict.

    `sampler` None = the objective's default; `options` are explicit SamplerOptions settings (an
    unknown or inapplicable one is a ConfigError naming the valid ones). A prompt is a prefix (the
    end of the text for runs generating right to left), a template fixes the length. ``seconds``
    includes compilation unless `warmup`: then the sampler runs once untimed first (same inputs, so
    the same samples) and ``seconds`` is the steady-state time. `record_traces`: also write the
    decode's traces (jaxorder.sampling.traces) to that .npz, for `jaxorder train-filter`."""
    run_dir = as_path(run_dir)
    if (run_dir / "config.yaml").is_file():  # fail fast, before restoring a checkpoint
        saved = config_lib.load(run_dir / "config.yaml")
        early = sampling.resolve(saved, sampler)
        early_options = sampling.make_options(early, options)
        if record_traces:
            trace_lib.check_recordable(early, early_options)
        for path in companion_dirs(early, options).values():
            require_checkpoint(path)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    cfg, params, step = load_params(run_dir)
    chosen = sampling.resolve(cfg, sampler)
    opts = sampling.run_file_options(chosen, sampling.make_options(chosen, options), str(run_dir))
    if record_traces:
        trace_lib.check_recordable(chosen, opts)  # again: a run without config.yaml skipped the early check
    companions = load_companions(chosen, opts)
    tokenizer = run_tokenizer(cfg, run_dir)
    row = build_inputs(tokenizer, length, cfg.data.seq_len, cfg.model.max_len, prompt, template,
                       prompt_at_end=objectives.of(cfg).reading_order == "r2l", max_new_tokens=max_new_tokens)
    tokens_BL = np.tile(row, (num_samples, 1))
    out, seconds = _timed(lambda: jax.device_get(
        sampling.sample(params, cfg, tokens_BL, jax.random.key(seed), chosen, opts, companions)), warmup)
    traced = {}
    if record_traces:
        trace = trace_lib.record(params, cfg, tokens_BL, out, jax.random.key(seed), opts)
        header = trace_lib.trace_header(trace, cfg, chosen.name, opts, len(row), num_samples,
                                        run=run_dir.name, run_step=step, seed=seed, prompt=prompt,
                                        template=template)
        traced = {"traces": {"path": str(trace_lib.save(record_traces, trace, header)),
                             "rows": header["rows"], "label_rate": header["label_rate"]}}
    samples = []
    for b in range(num_samples):
        ids = np.asarray(out["tokens"][b])
        text = tokenizer.decode(text_ids(ids, row == tokenizer.mask_id, tokenizer, opts.ignore_eos,
                                         objectives.of(cfg).reading_order == "r2l"))
        sample = {"text": text, "tokens": [int(x) for x in ids],
                  "logprob": float(out["logprob"][b])}
        if "eos" in out:
            sample["stopped_at_eos"] = bool(out["eos"][b])
        if "order" in out:
            sample["order"] = [int(x) for x in out["order"][b]]
        if "eos_stopped" in out:  # the learned sampler's end-of-text stop
            sample["eos_stopped"] = bool(out["eos_stopped"][b])
        if "committed_at" in out:  # the commit order (evaluation.commit_order)
            sample["committed_at"] = [int(x) for x in out["committed_at"][b]]
        if "uncertainty" in out:  # masked and block samplers: summed entropy at commit time (nats)
            sample["uncertainty"] = float(out["uncertainty"][b])
        samples.append(sample)
    generated = (int(np.sum(out["generated"])) if "generated" in out
                 else int((row == tokenizer.mask_id).sum()) * num_samples)
    uncertainty = ({"uncertainty_per_token": float(np.sum(out["uncertainty"])) / max(generated, 1)}
                   if "uncertainty" in out else {})
    settings = {k: getattr(opts, k) for k in chosen.options}
    return {
        "run": run_dir.name, "step": step, "objective": cfg.objective.name, "sampler": chosen.name,
        **settings,
        "steps": opts.steps if "steps" in chosen.options else int(out["steps"]),
        "steps_taken": int(out["steps"]),
        "forward_passes": int(out["nfe"]), "seed": seed, "length": int(len(row)), "samples": samples,
        "generated_tokens": generated, "seconds": round(seconds, 3),
        "seconds_include_compilation": not warmup,
        "complete": bool(np.all(out["complete"])) if "complete" in out else True,
        **uncertainty,
        **speculation_stats(out), **traced,
        **(order_stats(out["committed_at"]) if "committed_at" in out else {}),
    }


def text_ids(ids_L: np.ndarray, generated_L: np.ndarray, tokenizer: Any, ignore_eos: bool,
             reverse: bool = False) -> np.ndarray:
    """The ids a sample's text decodes: without PAD, and unless ``ignore_eos`` without its first
    generated EOS and the generated positions after it (padding, ``sampling.eos``); fixed tokens
    (a template's text after the span that ended) are kept. ``reverse`` (r2l runs, generated right
    to left and returned in reading order): the last generated EOS and the generated positions
    before it are dropped."""
    keep_L = ids_L != tokenizer.pad_id
    is_end_L = generated_L & (ids_L == tokenizer.eos_id)
    if not ignore_eos and is_end_L.any():
        pos_L = np.arange(len(ids_L))
        last, first = len(ids_L) - 1 - np.argmax(is_end_L[::-1]), np.argmax(is_end_L)
        keep_L &= ~generated_L | ((pos_L > last) if reverse else (pos_L < first))
    return ids_L[keep_L]


def speculation_stats(out: Mapping[str, Any]) -> dict:
    """Samplers with a companion run: speculative ones report draft forward passes and accepted draft
    tokens per round (mean over the rows' active rounds), the guided one its guide's forward passes;
    {} for other samplers."""
    if "guide_nfe" in out:
        return {"guide_forward_passes": int(out["guide_nfe"])}
    if "draft_nfe" not in out:
        return {}
    rounds = max(int(np.sum(out["rounds"])), 1)
    return {"draft_forward_passes": int(out["draft_nfe"]),
            "accepted_per_round": float(np.sum(out["accepted"])) / rounds}
