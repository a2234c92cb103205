"""`model.attention_impl: auto` (the default): resolution by backend, the compile probe and its
fallback to xla (on CPU, with the backend and the probe monkeypatched); `settle_model_config`
settles it together with `model.backward_rewrites`."""
import jax
import numpy as np
import pytest
import yaml

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.model import attention


def _model_cfg(*overrides):
    return config_lib.load(None, ["model.d_model=32", "model.n_heads=2", "model.n_layers=2",
                                  *overrides]).model


def test_auto_is_the_default_and_a_valid_choice():
    assert config_lib.ModelConfig().attention_impl == "auto"
    for impl in ("auto", "xla", "pallas"):
        assert _model_cfg(f"model.attention_impl={impl}").attention_impl == impl
    with pytest.raises(ConfigError, match="model.attention_impl='triton' is not one of: auto, xla, pallas"):
        _model_cfg("model.attention_impl=triton")


@pytest.mark.parametrize("backend,want", [("cpu", "xla"), ("tpu", "pallas"), ("gpu", "pallas"),
                                          ("cuda", "pallas")])
def test_resolve_by_backend(backend, want):
    assert attention.resolve_attention_impl("auto", backend) == want
    assert attention.resolve_attention_impl("xla", backend) == "xla"
    assert attention.resolve_attention_impl("pallas", backend) == "pallas"


def _probe_spy(fail: bool):
    calls = []

    def probe(head_dim, dtype):
        calls.append((head_dim, dtype))
        if fail:
            raise RuntimeError("Mosaic lowering failed: unsupported op\nmore detail")
    return probe, calls


def test_settle_on_cpu_uses_xla_without_probing(capsys):
    probe, calls = _probe_spy(fail=True)
    assert attention.settle_attention_impl(_model_cfg(), probe, backend="cpu").attention_impl == "xla"
    assert calls == [] and capsys.readouterr() == ("", "")


def test_settle_on_tpu_probes_and_uses_the_kernel(capsys):
    probe, calls = _probe_spy(fail=False)
    cfg = _model_cfg("model.dtype=bfloat16")
    assert attention.settle_attention_impl(cfg, probe, backend="tpu").attention_impl == "pallas"
    assert calls == [(16, "bfloat16")] and capsys.readouterr() == ("", "")


def test_settle_falls_back_to_xla_with_one_line_when_the_probe_fails(capsys):
    probe, calls = _probe_spy(fail=True)
    assert attention.settle_attention_impl(_model_cfg(), probe, backend="gpu").attention_impl == "xla"
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and calls == [(16, "float32")]
    for part in ("failed to compile on gpu", "RuntimeError: Mosaic lowering failed: unsupported op",
                 "falling back to xla", "model.attention_impl=pallas", "model.attention_impl=xla"):
        assert part in err


def test_explicit_choices_are_not_probed():
    probe, calls = _probe_spy(fail=True)
    for impl in ("xla", "pallas"):
        cfg = _model_cfg(f"model.attention_impl={impl}")
        assert attention.settle_attention_impl(cfg, probe, backend="tpu") is cfg
    assert calls == []


@pytest.mark.parametrize("backend, impl, rewrites", [("cpu", "xla", "cpu"), ("tpu", "pallas", "none"),
                                                    ("gpu", "pallas", "none")])
def test_settle_model_config_settles_every_auto_choice_by_backend(backend, impl, rewrites):
    probe, calls = _probe_spy(fail=False)
    settled = attention.settle_model_config(_model_cfg(), probe, backend=backend)
    assert (settled.attention_impl, settled.backward_rewrites) == (impl, rewrites)
    assert attention.settle_model_config(settled, probe, backend=backend) is settled
    resolved = attention.resolve_model_config(_model_cfg(), backend)  # the model's fallback: no probe
    assert (resolved.attention_impl, resolved.backward_rewrites) == (impl, rewrites)
    assert len(calls) == (impl == "pallas")


def test_settle_model_config_keeps_explicit_backward_rewrites():
    for choice in ("cpu", "none"):
        for backend in ("cpu", "tpu"):
            cfg = _model_cfg(f"model.backward_rewrites={choice}", "model.attention_impl=xla")
            assert attention.settle_model_config(cfg, backend=backend) is cfg


def test_probe_compiles_forward_and_backward_and_raises_compile_errors(monkeypatch):
    attention.probe_pallas_attention(16, "float32")  # on CPU: the kernel's plain-JAX reference path
    import pallas_kernels

    def broken(*args, **kwargs):
        raise NotImplementedError("no lowering")
    monkeypatch.setattr(pallas_kernels, "rope_attention", broken)
    with pytest.raises(NotImplementedError, match="no lowering"):
        attention.probe_pallas_attention(16, "float32")


def test_auto_model_runs_xla_on_cpu_and_the_tpu_kernel_on_tpu(monkeypatch):
    """Same logits: auto on CPU is the xla path exactly; auto on a (patched) TPU backend runs the
    TPU-variant kernel in TPU interpret mode (pallas_interpret) within float32 tolerance."""
    cfg_auto, cfg_xla = _model_cfg(), _model_cfg("model.attention_impl=xla")
    params = model.init_params(cfg_xla, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    pos = jax.random.permutation(jax.random.key(2), 16)[None].repeat(2, 0)
    want = model.apply(params, cfg_xla, tokens, pos, "causal")
    np.testing.assert_array_equal(model.apply(params, cfg_auto, tokens, pos, "causal"), want)
    import pallas_kernels.attention as kernel_mod
    variants = []
    real_variant = kernel_mod.kernel_variant
    monkeypatch.setattr(kernel_mod, "kernel_variant",
                        lambda v, i: variants.append(real_variant(v, i)) or variants[-1])
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    cfg_tpu = _model_cfg("model.pallas_interpret=true")
    got = model.apply(params, cfg_tpu, tokens, pos, "causal")
    assert set(variants) == {"tpu"}
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_runs_save_auto_and_load_params_settles_it(finished_run, monkeypatch, capsys):
    """The run directory keeps `auto` (resumable on any backend); load_params (eval, sample)
    settles it, here on a patched GPU backend whose probe fails."""
    saved = yaml.safe_load((finished_run.run_dir / "config.yaml").read_text())
    assert saved["model"]["attention_impl"] == "auto"
    from jaxorder.evaluation import runs
    probe, calls = _probe_spy(fail=True)
    real = runs.settle_model_config
    monkeypatch.setattr(runs, "settle_model_config", lambda m: real(m, probe, backend="gpu"))
    cfg, _, _ = runs.load_params(finished_run.run_dir)
    assert cfg.model.attention_impl == "xla" and len(calls) == 1
    assert saved["model"]["backward_rewrites"] == "auto" and cfg.model.backward_rewrites == "none"
    assert "falling back to xla" in capsys.readouterr().err
