"""The command-line flags of the sampler settings, one per `SamplerOptions` field (its help and
choices come from the field), shared by `jaxorder sample` and `jaxorder eval --generate`.

A flag is the field's name with dashes (`draft_length` -> `--draft-length`). A bool field that
defaults to True gets `--no-<name>`, one that defaults to False `--<name>`. Unset flags stay None,
so `given_options` returns only what was given: an option the chosen sampler does not read is an
error only when it was set. `steps` is added by each command (its default differs between them).
"""
from __future__ import annotations

import argparse
import dataclasses

from jaxorder import objectives
from jaxorder.sampling.base import SamplerOptions, all_samplers

_TYPES = {"int": int, "float": float, "str": str}


def _cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(SamplerOptions) if f.metadata["cli"] and f.name != "steps"]


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """One flag per command-line SamplerOptions field (besides --steps)."""
    for f in _cli_fields():
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type == "bool":
            flag = flag if f.default is False else "--no-" + flag[2:]
            p.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=None,
                           help=help_text)
        else:
            choices = list(f.metadata["choices"]) or None
            p.add_argument(flag, dest=f.name, type=_TYPES[f.type], choices=choices, default=None,
                           metavar=f.metadata["metavar"] or None, help=help_text)


def add_length_flags(p: argparse.ArgumentParser) -> None:
    """`jaxorder sample`'s two ways to say how long: the whole row, or the tokens after the prompt."""
    length = p.add_mutually_exclusive_group()
    length.add_argument("--length", type=int,
                        help="tokens per sequence incl. the prompt (default: the run's data.seq_len)")
    length.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="tokens to generate after the prompt (the length is the prompt's + N); "
                             "generation ends earlier at EOS unless --ignore-eos")


def given_options(args: argparse.Namespace) -> dict:
    """The sampler settings set on the command line, by SamplerOptions field name."""
    names = [f.name for f in dataclasses.fields(SamplerOptions)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def sampler_help() -> str:
    """--sampler's help: the registered samplers for the runs of each objective, the default first."""
    runs: dict[str, list[str]] = {}  # sampling family -> objective names
    defaults = {}
    for o in objectives.all_objectives():
        runs.setdefault(o.sampling, []).append(o.name)
        defaults[o.sampling] = o.default_sampler
    names: dict[str, list[str]] = {}
    for s in all_samplers():
        names.setdefault(s.family, []).append(s.name)
    parts = [f"{'/'.join(runs[family])} runs: "
             f"{' | '.join(sorted(found, key=lambda n: n != defaults.get(family)))}"
             for family, found in names.items() if family in runs]
    return "the default first; " + "; ".join(parts)
