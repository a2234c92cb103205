"""Observability of training: the FLOPs/token formula, step time / tokens/s / MFU in metrics.jsonl
and the log, the profiler trace of chosen steps, and RUN_DIR/logs/train.log."""
from __future__ import annotations

import gzip
import json
import time

import jax
import pytest

from jaxorder import config as config_lib
from jaxorder.model.transformer import init_params
from jaxorder.platform import flops
from jaxorder.training.loop import train
from jaxorder.training.metrics import read_metrics
from jaxorder.training.observe import StepClock, Throughput, speed_text

from conftest import TINY


@pytest.mark.parametrize("target_positions", [False, True])
def test_flops_per_token_matches_a_hand_count(target_positions):
    cfg = config_lib.load(None, ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "data.seq_len=8"])
    params = jax.eval_shape(lambda: init_params(cfg.model, jax.random.key(0),
                                                target_positions=target_positions))
    d, ff, vocab = 16, 64, 260  # d_ff = 8/3 * 16 rounded up to a multiple of 64
    per_layer = 3 * d * d + d * d + 2 * d * ff + ff * d + 2 * d  # qkv, out, gate_up, down, two norms
    n = per_layer + d + d * vocab  # final norm, head; the embedding tables are lookups
    assert flops.matmul_params(params) == n
    attention = 12 * 1 * 2 * 8 * 8  # 12 * layers * heads * head_dim * T
    assert flops.flops_per_token(cfg.model, 8, n) == 6 * n + attention


def test_peak_table_picks_the_most_specific_device_kind():
    assert flops.detected_peak_tflops("TPU v5 lite") == 197.0
    assert flops.detected_peak_tflops("TPU v5") == 459.0
    assert flops.detected_peak_tflops("TPU v6 lite") == 918.0
    assert flops.detected_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.detected_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.detected_peak_tflops("cpu") is None


def test_throughput_values_and_mfu_arithmetic():
    t = Throughput(tokens_per_step=100, flops_per_token=1e6, peak_tflops=1.0, n_devices=2)
    v = t.values(10, 2.0)
    assert v["step_seconds"] == pytest.approx(0.2) and v["tokens_per_s"] == pytest.approx(500.0)
    assert v["mfu"] == pytest.approx(500 * 1e6 / 2e12)
    assert "MFU 0.0%" in speed_text(v) and "200.0 ms/step" in speed_text(v)
    assert "mfu" not in Throughput(100, 1e6, None, 2).values(10, 2.0)
    assert t.values(0, 1.0) == {} and speed_text({}) == ""


def test_step_clock_leaves_out_excluded_time():
    clock = StepClock()
    assert clock.window() == (0, 0.0)  # not started: the compile step is never timed
    clock.start()
    clock.step()
    time.sleep(0.05)
    with clock.excluded():
        time.sleep(0.3)
    clock.step()
    steps, seconds = clock.window()
    assert steps == 2 and 0.04 < seconds < 0.25
    assert clock.window()[0] == 0  # a window resets


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory, repeated_corpus):
    run_dir = tmp_path_factory.mktemp("observe") / "run"
    cfg = config_lib.load(None, [*TINY, "data.source=text", f"data.path={repeated_corpus}", "train.steps=8",
                                 "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4",
                                 "train.peak_tflops=0.5", "profile.start_step=3", "profile.steps=2",
                                 "logging.tensorboard=false"])
    train(cfg, run_dir)
    return run_dir


def test_metrics_carry_step_time_tokens_per_s_and_mfu(profiled_run):
    records = [r for r in read_metrics(profiled_run) if r["split"] == "train"]
    assert [r["step"] for r in records] == [2, 4, 6, 8]  # step 2's window: step 2 (step 1 compiles)
    model_cfg = config_lib.load(None, list(TINY)).model
    fpt = flops.flops_per_token(model_cfg, 32, flops.matmul_params(
        jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))))
    for r in records:
        assert r["tokens_per_s"] == pytest.approx(8 * 32 / r["step_seconds"], rel=1e-6)
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / 0.5e12, rel=1e-6)


def test_train_log_file_holds_the_printed_lines(profiled_run):
    text = (profiled_run / "logs" / "train.log").read_text()
    assert "step 8/8 loss" in text and "ms/step" in text and "| MFU " in text
    assert "train.peak_tflops=0.5" in text and "profile of steps 3-4" in text


def test_profile_trace_of_the_chosen_steps_parses(profiled_run):
    xplanes = list((profiled_run / "profile").rglob("*.xplane.pb"))
    assert len(xplanes) == 1 and xplanes[0].stat().st_size > 1000
    traces = list((profiled_run / "profile").rglob("*.trace.json.gz"))
    assert len(traces) == 1
    events = json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"]
    calls = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "PjitFunction(step_fn)"]
    outermost = [c for c in calls if not any(o != c and o[0] <= c[0] and c[1] <= o[1] for o in calls)]
    assert len(outermost) == 2  # steps 3 and 4 (the jitted step's python-side call), no other step


def test_without_a_peak_on_cpu_mfu_is_omitted_and_said_once(tmp_path, repeated_corpus):
    cfg = config_lib.load(None, [*TINY, "data.source=text", f"data.path={repeated_corpus}", "train.steps=4",
                                 "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4",
                                 "logging.tensorboard=false"])
    train(cfg, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert "step_seconds" in records[-1] and "mfu" not in records[-1]
    text = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert text.count("MFU not logged") == 1 and "train.peak_tflops" in text


def test_eval_results_are_copied_into_the_run_directory(profiled_run, capsys):
    from jaxorder import cli

    assert cli.main(["eval", str(profiled_run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = list((profiled_run / "eval").glob("step8-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == printed
