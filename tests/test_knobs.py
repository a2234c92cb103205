"""Memory and throughput knobs leave the loss of a fixed batch unchanged: scan over layers, remat
policies, gradient accumulation, bf16 compute / bf16 parameters (float32 master weights)."""
import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.experiments.analysis.attention import capture_attention
from jaxorder.model.transformer import stack_layers, unstack_layers
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.max_len=32", "data.seq_len=16",
        "data.batch_size=8", "optimizer.lr=1e-2", "optimizer.warmup_steps=1", "train.steps=10"]
TOL = 1e-5
BF16_RTOL = 2e-2  # bf16 has an 8-bit mantissa (relative rounding 2^-9 per op); observed ~1e-3 here


def cfg_of(*over: str, objective: str = "l2r"):
    return config_lib.load(None, [*TINY, f"objective.name={objective}", *over])


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16), dtype=np.int32))


@pytest.fixture(scope="module")
def unrolled_params():
    cfg = cfg_of()
    return model.init_params(cfg.model, jax.random.key(0), cfg.data.seq_len)


def loss_and_grads(cfg, params, tokens, rng=jax.random.key(1)):
    objective = objectives.get(cfg.objective.name)
    fn = jax.jit(jax.value_and_grad(lambda p: objective.loss(p, {"tokens": tokens}, rng, cfg)[0]))
    return fn(params)


@pytest.fixture(scope="module")
def reference(unrolled_params, tokens):
    """l2r loss and grads, unrolled (False) and scanned (True), no remat, float32."""
    return {False: loss_and_grads(cfg_of(), unrolled_params, tokens),
            True: loss_and_grads(cfg_of("model.scan_layers=true"), stack_layers(unrolled_params, 2), tokens)}


@pytest.mark.parametrize("objective", ["l2r", "mdm"])
def test_scan_equals_unrolled_with_stacked_params(unrolled_params, tokens, reference, objective):
    flat, scanned = cfg_of(objective=objective), cfg_of("model.scan_layers=true", objective=objective)
    stacked = stack_layers(unrolled_params, flat.model.n_layers)
    # the scanned model's own parameters have exactly this layout
    own = jax.eval_shape(lambda: model.init_params(scanned.model, jax.random.key(0), 16))
    chex.assert_trees_all_equal_shapes_and_dtypes(own, stacked)
    if objective == "l2r":
        (loss_u, grads_u), (loss_s, grads_s) = reference[False], reference[True]
    else:
        loss_u, grads_u = loss_and_grads(flat, unrolled_params, tokens)
        loss_s, grads_s = loss_and_grads(scanned, stacked, tokens)
    np.testing.assert_allclose(loss_s, loss_u, atol=TOL, rtol=0)
    chex.assert_trees_all_close(unstack_layers(grads_s, flat.model.n_layers), grads_u, atol=TOL, rtol=0)


def test_scan_logical_axes_have_a_layers_axis():
    axes = model.logical_axes(cfg_of("model.scan_layers=true").model)
    assert tuple(axes["layers"]["mlp"]["down"]) == ("layers", "mlp", "embed")
    assert tuple(axes["layers"]["attn_norm"]["scale"]) == ("layers", "embed")
    assert tuple(axes["head"]) == ("embed", "vocab")


def test_weight_decay_mask_ignores_the_layer_axis(unrolled_params):
    from jaxorder.training.optimizer import _is_matrix

    stacked = stack_layers(unrolled_params, 2)
    mask_u = jax.tree_util.tree_map_with_path(_is_matrix, unrolled_params)
    mask_s = jax.tree_util.tree_map_with_path(_is_matrix, stacked)
    assert mask_s["layers"]["mlp_norm"]["scale"] is False and mask_s["layers"]["mlp"]["down"] is True
    assert mask_s["layers"] == mask_u["layer_0"]
    assert ({k: v for k, v in mask_s.items() if k != "layers"}
            == {k: v for k, v in mask_u.items() if "layer_" not in k})


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_keeps_loss_and_grads(unrolled_params, tokens, reference, scan, policy):
    params = stack_layers(unrolled_params, 2) if scan else unrolled_params
    over = [f"model.scan_layers={str(scan).lower()}"]
    loss0, grads0 = reference[scan]
    loss1, grads1 = loss_and_grads(cfg_of(*over, f"model.remat={policy}"), params, tokens)
    np.testing.assert_allclose(loss1, loss0, atol=TOL, rtol=0)
    chex.assert_trees_all_close(grads1, grads0, atol=TOL, rtol=0)


def projection_dots(cfg, params, tokens) -> int:
    """Dots without batch dims (the q/k/v/out/gate/up/down/head projections and their gradients)
    in the compiled l2r gradient: recomputed projections under remat add to the count."""
    objective = objectives.get(cfg.objective.name)
    grad = jax.jit(jax.grad(lambda p: objective.loss(p, {"tokens": tokens}, jax.random.key(1), cfg)[0]))
    hlo = grad.lower(params).compile().as_text()
    return sum(1 for line in hlo.splitlines() if " dot(" in line and "lhs_batch_dims" not in line)


@pytest.mark.parametrize("scan, rewrites", [(False, "cpu"), (True, "cpu"), (False, "none")])
def test_dots_policies_save_the_projections(unrolled_params, tokens, scan, rewrites):
    """The dots_* remat policies keep the projections, so the backward pass recomputes none of them
    (only attention's batched dots under dots_with_no_batch_dims_saveable), unlike full remat. The
    rewritten projections (backward_rewrites=cpu) are dots inside a custom_vjp, kept through their
    checkpoint name; the plain ones (none) are dots the policies see."""
    params = stack_layers(unrolled_params, 2) if scan else unrolled_params
    count = {policy: projection_dots(cfg_of(f"model.scan_layers={str(scan).lower()}", f"model.remat={policy}",
                                            f"model.backward_rewrites={rewrites}"), params, tokens)
             for policy in ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")}
    assert count["full"] > count["none"]
    assert count["dots_saveable"] == count["dots_with_no_batch_dims_saveable"] == count["none"], count


def one_step(cfg, tokens):
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    return jax.jit(make_train_step(cfg, optimizer))(state, tokens)


@pytest.fixture(scope="module")
def l2r_step(tokens):
    return one_step(cfg_of(), tokens)


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accum_equals_one_batch_for_l2r(tokens, l2r_step, k):
    state1, metrics1 = l2r_step
    statek, metricsk = one_step(cfg_of(f"train.grad_accum_steps={k}"), tokens)
    np.testing.assert_allclose(metricsk["loss"], metrics1["loss"], atol=TOL, rtol=0)
    np.testing.assert_allclose(metricsk["grad_norm"], metrics1["grad_norm"], rtol=1e-4)
    chex.assert_trees_all_close(statek["params"], state1["params"], atol=TOL, rtol=0)


def test_grad_accum_mdm_is_finite_and_close(tokens):
    _, metrics1 = one_step(cfg_of(objective="mdm"), tokens)
    _, metrics2 = one_step(cfg_of("train.grad_accum_steps=2", objective="mdm"), tokens)
    assert np.isfinite(metrics2["loss"]) and np.isfinite(metrics2["grad_norm"])
    # different noise levels (antithetic draws per micro-batch): same scale, not the same value
    np.testing.assert_allclose(metrics2["loss"], metrics1["loss"], rtol=0.5)


@pytest.mark.parametrize("over", [["model.dtype=bfloat16"], ["model.param_dtype=bfloat16"],
                                  ["model.dtype=bfloat16", "model.param_dtype=bfloat16"]])
def test_bf16_loss_close_to_f32(unrolled_params, tokens, reference, over):
    loss32, _ = reference[False]
    cfg = cfg_of(*over)
    loss16 = jax.jit(lambda p: objectives.get("l2r").loss(p, {"tokens": tokens}, jax.random.key(1), cfg)[0])(
        unrolled_params)
    np.testing.assert_allclose(loss16, loss32, rtol=BF16_RTOL)


def test_bf16_params_keep_float32_master_weights(tokens):
    cfg = cfg_of("model.param_dtype=bfloat16", "model.dtype=bfloat16")
    state, metrics = one_step(cfg, tokens)
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state["opt_state"]) if x.ndim} == {jnp.dtype(jnp.float32)}
    assert metrics["grad_norm"].dtype == jnp.float32
    assert np.isfinite(metrics["loss"])


def test_attention_analysis_with_scan(unrolled_params, tokens):
    flat, scanned = cfg_of(), cfg_of("model.scan_layers=true")
    positions = jnp.broadcast_to(jnp.arange(16), tokens.shape)
    a = capture_attention(unrolled_params, flat.model, tokens, positions, "causal")
    b = capture_attention(stack_layers(unrolled_params, 2), scanned.model, tokens, positions, "causal")
    assert b.probs.shape == a.probs.shape == (2, 8, 4, 16, 16)
    for x, y in [(a.logits, b.logits), (a.q_pre, b.q_pre), (a.k_pre, b.k_pre), (a.probs, b.probs)]:
        np.testing.assert_allclose(y, x, atol=TOL, rtol=0)


def test_compile_with_scan_and_remat_on_8_devices():
    """`jaxorder compile` (8 forced host devices, 2x2x2 mesh) with scanned, rematerialized layers."""
    config = str(REPO / "configs" / "experiments" / "l2r_tiny.yaml")
    over = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "data.seq_len=32",
            "data.batch_size=16", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.scan_layers=true",
            "model.remat=full", "train.grad_accum_steps=2"]
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "compile", config, "--devices", "8", *over,
                           "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert report["flops_per_step_per_device"] > 0 and report["param_gib_per_device"] > 0
