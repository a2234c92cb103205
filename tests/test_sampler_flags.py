"""The sampler flags are generated from SamplerOptions: every command-line field has one flag on
`sample` and on `eval --generate`, its value reaches the options unchanged, and unset flags stay out."""
from __future__ import annotations

import dataclasses

import pytest

from jaxorder.cli import build_parser
from jaxorder.sampling import SamplerOptions, all_samplers
from jaxorder.sampling.flags import given_options, sampler_help

SET = {"int": "3", "float": "0.5", "str": None}  # a value of each type to set (str: from choices or any)


def _set_every_flag() -> tuple[list[str], dict]:
    argv, expected = [], {}
    for f in dataclasses.fields(SamplerOptions):
        if not f.metadata["cli"]:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            argv.append(flag if f.default is False else "--no-" + flag[2:])
            expected[f.name] = not f.default
        else:
            value = f.metadata["choices"][-1] if f.metadata["choices"] else SET[f.type] or "x"
            argv += [flag, value]
            expected[f.name] = {"int": int, "float": float, "str": str}[f.type](value)
    return argv, expected


@pytest.mark.parametrize("command", [["sample", "RUN"], ["eval", "RUN", "--generate"]])
def test_every_option_field_is_a_flag_and_reaches_the_options(command):
    argv, expected = _set_every_flag()
    args = build_parser().parse_args([*command, *argv])
    assert given_options(args) == expected
    assert given_options(build_parser().parse_args(command)) == {}  # unset flags stay out


def test_the_sampler_help_names_every_registered_sampler():
    text = sampler_help()
    for sampler in all_samplers():
        assert sampler.name in text
    assert "mdm runs: confidence |" in text and "l2r/r2l runs: ar |" in text  # defaults first
