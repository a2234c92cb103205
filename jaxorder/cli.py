"""The `jaxorder` command: train, eval, sweep, study, analyze, sample."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
from etils import epath

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.data import prepare_command
from jaxorder.errors import describe_os_error, out_of_memory_line
from jaxorder.evaluation import filter_training, rerank, scoring
from jaxorder.evaluation.runs import eval_run, sample_run
from jaxorder.evaluation.sample_quality import generation_quality
from jaxorder.experiments import report, study
from jaxorder.experiments.analysis import command as analysis_command
from jaxorder.experiments.restarts import train_with_restarts
from jaxorder.experiments.sweep import plan, run_sweep
from jaxorder.interop.hf_export import export_hf
from jaxorder.jsonout import dumps
from jaxorder.platform import aot
from jaxorder.platform.distributed import initialize
from jaxorder.platform.host_memory import configure_host_malloc
from jaxorder.sampling.flags import add_length_flags, add_sampler_flags, given_options, sampler_help
from jaxorder.training.loop import Preempted

EPILOG_OVERRIDES = ("Overrides are section.field=value pairs applied after the config file, e.g. "
                    "model.n_layers=4 train.steps=500 objective.name=mdm data.source=text data.path=my.txt")


def _default_run_dir(config_path: str, overrides: list[str]) -> Path:
    stem = Path(config_path).stem
    if not overrides:
        return Path("runs") / stem
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return Path("runs") / f"{stem}-{digest}"


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.config, args.overrides)
    initialize(cfg.distributed)
    run_dir = args.run_dir if args.run_dir else _default_run_dir(args.config, args.overrides)  # may be gs://
    result = train_with_restarts(cfg, run_dir)
    _print_result(result, args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    for flag, value in (("--windows", args.max_windows), ("--num-samples", args.num_samples)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    result = eval_run(args.run_dir, args.orders, args.max_windows)
    if args.generate:
        result["generate"] = generation_quality(args.run_dir, num_samples=args.num_samples,
                                                sampler=args.sampler, options=given_options(args),
                                                seed=args.seed, judge=args.judge)
    _save_eval(args.run_dir, result)
    _print_result(result, args.json)
    if not args.json and "generate" in result:
        print("  generate: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result["generate"].items()))
    if not args.json:
        for label, r in result.get("orders", {}).items():
            print(f"  order {label:<10} {r['bpb']:.4f} ± {r['bpb_stderr']:.4f} bits/byte ({r['kind']}, "
                  f"{r['windows']} windows)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.plan:  # nothing is trained
        return int(plan(Path(args.sweep), args.overrides) < 0)
    results = run_sweep(Path(args.sweep), Path(args.out) if args.out else None, args.overrides,
                        table_to_stderr=args.json)
    if args.json:
        print(dumps({"runs": results}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    summary = export_hf(args.run_dir, args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        kind = "remote code (trust_remote_code=True)" if summary["remote_code"] else "stock transformers"
        print(f"exported {summary['run']} (step {summary['step']}, {summary['objective']}) to "
              f"{summary['out']}: {summary['architecture']}, {kind}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    result = sample_run(args.run_dir, sampler=args.sampler, options=given_options(args),
                        num_samples=args.num_samples, record_traces=args.record_traces,
                        seed=args.seed, prompt=args.prompt, template=args.template, length=args.length,
                        max_new_tokens=args.max_new_tokens)
    if args.json:
        print(dumps(result))
        return 0
    for i, s in enumerate(result["samples"]):
        print(f"--- sample {i + 1}/{len(result['samples'])} (log p = {s['logprob']:.2f} nats)")
        print(s["text"])
    drafted = (f", {result['draft_forward_passes']} draft passes, {result['accepted_per_round']:.2f} "
               f"drafts accepted per round" if "draft_forward_passes" in result else "")
    drafted += (f", {result['guide_forward_passes']} guide passes" if "guide_forward_passes" in result
                else "")
    print(f"{result['run']} (step {result['step']}): {result['sampler']}, {result['steps_taken']} steps, "
          f"{result['forward_passes']} forward passes{drafted}, T={result['temperature']:g}, "
          f"seed {result['seed']}, "
          f"{result['generated_tokens']} tokens in {result['seconds']:.2f} s incl. compilation"
          + (f"; traces written to {result['traces']['path']}" if "traces" in result else ""),
          file=sys.stderr)
    return 0


def _save_eval(run_dir: str, result: dict) -> None:
    """A copy of the eval result in RUN_DIR/eval/step<N>-<time>.json (a read-only run dir: a warning)."""
    path = epath.Path(run_dir) / "eval" / f"step{result['step']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(result, indent=1) + "\n")
    except OSError as e:
        print(f"warning: the eval result was not saved to {path} ({describe_os_error(e)[0]})",
              file=sys.stderr)


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(dumps(result))
    else:
        print(f"{result['run']}: {result['bpb']:.4f} ± {result['bpb_stderr']:.4f} bits/byte "
              f"({result['kind']}, {result['objective']}, step {result['step']}, "
              f"{result['windows']} windows)")
        for name, e in result.get("extras", {}).items():  # an objective's eval_extras
            value = (f"{e['bpb']:.4f} ± {e['bpb_stderr']:.4f} bits/byte" if "bpb" in e
                     else f"{e['mean']:.4f} ± {e['stderr']:.4f}" if isinstance(e["mean"], float)
                     else " ".join(f"{v:.2f}" for v in e["mean"]))
            print(f"  {name}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxorder",
        description="Generation-order experiments: train L2R, R2L and masked-diffusion LMs on one yardstick.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) one run from a YAML config",
                       description="Train a model from a YAML config. Re-running on an existing run "
                                   "directory resumes from its newest checkpoint.", epilog=EPILOG_OVERRIDES)
    p.add_argument("config", help="experiment YAML, e.g. configs/experiments/l2r_tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--run-dir", help="where checkpoints, metrics and the resolved config go "
                                     "(default: runs/<config name>[-<hash of overrides>])")
    p.add_argument("--json", action="store_true",
                   help="print the final evaluation as one JSON object on stdout")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="validation bits/byte of a run's newest checkpoint",
                       description="Score a run directory's newest checkpoint on the validation windows: "
                                   "exact bits/byte for l2r/r2l, the ELBO upper bound for mdm (with "
                                   "its standard error).")
    p.add_argument("run_dir", help="a run directory made by `jaxorder train` or `jaxorder sweep`")
    p.add_argument("--orders", help="mdm, ao_ar, latent_order runs: also score exactly under fixed orders, a "
                                    "comma list of l2r, r2l, random:K, greedy (mdm only), perm:5,1-4,0,6- "
                                    "(explicit; a last k- = the rest), perm@FILE (one per line or window)")
    p.add_argument("--windows", "--max-windows", dest="max_windows", type=int, default=64,
                   help="validation windows scored for --orders, each score with its s.e. over them "
                        "(default 64; --max-windows is an old name)")
    p.add_argument("--generate", action="store_true",
                   help="also sample unprompted windows and report sample quality: unigram entropy, NLL "
                        "under a judge l2r run (--judge, default: the l2r run beside this one on the same "
                        "data), tokens/s, and for Sudoku data the fraction of valid grids")
    p.add_argument("--num-samples", type=int, default=16, help="--generate: samples (default 16)")
    p.add_argument("--sampler", help="--generate: sampler (default: the objective's, see `jaxorder sample`)")
    p.add_argument("--steps", type=int,
                   help="--generate, mdm/bd3: sampling steps (default: the window length)")
    p.add_argument("--seed", type=int, default=0, help="--generate: sampling seed")
    p.add_argument("--judge", help="--generate: an l2r run directory to score the samples")
    add_sampler_flags(p)  # --generate: the sampler settings of `jaxorder sample`
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    p.set_defaults(func=cmd_eval)

    aot.add_parser(sub, EPILOG_OVERRIDES)

    p = sub.add_parser("sweep", help="run a grid of configs and write results.md/.csv and a plot",
                       description="Run every grid point of a sweep YAML (finished runs are reused, partial "
                                   "ones resume), then write results.md, results.csv and val_bpb.png.",
                       epilog="Overrides apply to every run of the sweep. " + EPILOG_OVERRIDES)
    p.add_argument("sweep", help="sweep YAML, e.g. configs/sweeps/orders_smoke.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every run")
    p.add_argument("--out", help="sweep directory (default: runs/sweeps/<sweep name>)")
    p.add_argument("--json", action="store_true", help="also print all results as one JSON object on stdout")
    p.add_argument("--plan", action="store_true", help="print sizes, compute, est. time; no training")
    p.set_defaults(func=cmd_sweep)
    report.add_parser(sub)
    study.add_parser(sub)

    analysis_command.add_command(sub)

    p = sub.add_parser("sample", help="generate or infill text with a trained run (every objective)",
                       description="Sample from a run directory's newest checkpoint and print the decoded "
                                   "texts. Masked-diffusion (mdm) and block-diffusion (bd3) runs: samplers "
                                   "ancestral (MDLM), confidence, margin, entropy (commit the k best masked "
                                   "positions per step, k = ceil(masked left / steps left)) and threshold "
                                   "(commit every position with confidence >= --threshold, at least one per "
                                   "step; --steps is then an upper bound) and factor; bd3 "
                                   "runs go block by block with a KV cache over finished blocks, --steps "
                                   "split over the blocks. l2r / r2l runs: sampler ar (KV-cache decoding "
                                   "with --temperature, --top-k, --top-p, stopping at EOS; r2l generates "
                                   "right to left and --prompt is the END of the text; sampler speculative: "
                                   "a smaller --draft run proposes --draft-length tokens per round, the "
                                   "run verifies them in one pass, same distribution). ao_ar / latent_order "
                                   "runs: the sampler is the generation order, l2r, r2l, random or greedy "
                                   "(the most confident position next), KV-cache decoding over the permuted "
                                   "prefix with --temperature, --top-k, --top-p; or speculative (a random "
                                   "order, any-subset speculative decoding: --draft-length positions drafted "
                                   "per round and verified in one call, same distribution as random).",
                       epilog="Template syntax: fixed text with masked spans [MASK:n] (n tokens; bytes with "
                              "the byte tokenizer) or [MASK] (one token), e.g. --template 'To be, or "
                              "[MASK:12] to be'. Fixed tokens never change; every mask is filled. Templates "
                              "work for mdm, bd3, ao_ar and latent_order runs.")
    p.add_argument("run_dir", help="a run directory made by `jaxorder train` or `jaxorder sweep`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="fixed prefix; the rest up to --length is generated")
    src.add_argument("--template", help="text with [MASK:n] / [MASK] spans to fill (fixes the length)")
    p.add_argument("--sampler", default=None, help=sampler_help())
    p.add_argument("--steps", type=int, default=None,
                   help="mdm/bd3: denoising steps, i.e. forward passes at most (default 64); ar and "
                        "any-order: unused (one per token)")
    p.add_argument("--num-samples", type=int, default=1, help="sequences sampled in one batch (default 1)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples (default 0)")
    add_length_flags(p)
    add_sampler_flags(p)
    p.add_argument("--record-traces", metavar="PATH", help="mdm runs: also write the decoding traces (.npz) "
                                                           "that `jaxorder train-filter` fits a filter to")
    p.add_argument("--json", action="store_true",
                   help="print the samples and settings as one JSON object on stdout")
    p.set_defaults(func=cmd_sample)
    for module in (filter_training, scoring, rerank):  # subcommands kept beside what they run
        module.add_command(sub)
    prepare_command.add_command(sub, EPILOG_OVERRIDES)

    p = sub.add_parser("export", help="write a run as a Hugging Face model directory (needs the [hf] extra)",
                       description="`export hf RUN_DIR OUT`: the newest checkpoint as safetensors weights, "
                                   "config.json, tokenizer.json with its special tokens and a model card. "
                                   "l2r/r2l runs become a stock LlamaForCausalLM; other objectives ship a "
                                   "trust_remote_code module (modeling_jaxorder.py) with their forward pass.")
    p.add_argument("what", choices=["hf"], help="the export format (hf: Hugging Face transformers)")
    p.add_argument("run_dir", help="a run directory made by `jaxorder train` or `jaxorder sweep`")
    p.add_argument("out", help="the new model directory (must not exist or be empty)")
    p.add_argument("--json", action="store_true", help="print a summary as one JSON object")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`train CONFIG --run-dir D a.b=1`), which argparse leaves unparsed.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]

    try:  # before JAX creates its CPU client (see jaxorder.platform.host_memory)
        configure_host_malloc()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"error: {out_of_memory_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions, a file where a directory should be
        message, status = describe_os_error(e)
        print(f"error: {message}", file=sys.stderr)
        return status
    except Preempted:
        return 143
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
