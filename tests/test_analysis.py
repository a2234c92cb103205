"""Attention diagnostics (jaxorder.experiments.analysis): exact slash scores on synthetic maps,
rank-one-ness of a rank-one construction, capture leaves the model unchanged and reproduces its
attention, and `jaxorder analyze attention` end to end on tiny trained runs (files, --compare,
one-line errors)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import cli, model, objectives
from jaxorder import config as config_lib
from jaxorder.config import ModelConfig
from jaxorder.experiments.analysis import (
    analysis_view,
    analyze_capture,
    capture_attention,
    dominant_offset,
    entropy_and_sink,
    model_inputs,
    rank_one_ness,
    slash_dominant_fraction,
    slash_scores,
    supported,
)
from jaxorder.experiments.analysis.attention import uniform_baseline
from jaxorder.model import transformer
from jaxorder.model.attention import attention_mask
from jaxorder.objectives import ao_ar, bd3

TINY_MODEL = ModelConfig(vocab_size=260, d_model=32, n_layers=2, n_heads=2)


def _one_hot_rows(L: int, cols: list[int]) -> np.ndarray:
    p = np.zeros((L, L))
    p[np.arange(L), cols] = 1.0
    return p


# ----------------------------------------------------------------------------- synthetic maps

def test_slash_scores_exact_on_known_diagonal_bidirectional():
    L, D = 16, 5
    mask = np.ones((L, L), bool)
    # rows 0..12 attend to i+3; rows 13..15 (no +3 diagonal) attend to i-2
    probs = _one_hot_rows(L, [i + 3 if i + 3 < L else i - 2 for i in range(L)])
    scores = slash_scores(probs[None, None], mask, D)[0]
    offsets = list(range(-D, D + 1))
    assert scores[offsets.index(3)] == 1.0  # every row that has the +3 diagonal puts all its mass there
    # 3 of the 14 rows with a -2 diagonal
    assert scores[offsets.index(-2)] == pytest.approx(3 / 14, abs=1e-12)
    assert all(scores[offsets.index(d)] == 0.0 for d in offsets if d not in (3, -2))
    best, score = dominant_offset(scores[None], D)
    assert (best[0], score[0]) == (3, 1.0)


def test_slash_scores_causal_self_excluded_from_dominant():
    L, D = 12, 4
    mask = np.asarray(attention_mask("causal", L))
    probs = 0.3 * np.eye(L) + 0.7 * np.eye(L, k=-1)
    probs[0, 0] = 1.0
    scores = slash_scores(np.stack([probs, np.eye(L)])[None], mask, D)  # head 0: slash, head 1: pure self
    assert np.isnan(scores[:, D + 1:]).all()  # Δ > 0 does not exist under a causal mask
    assert scores[0, D - 1] == pytest.approx(0.7, abs=1e-12)
    assert scores[0, D] == pytest.approx((1 + 0.3 * (L - 1)) / L, abs=1e-12)
    assert scores[1, D] == 1.0
    best, score = dominant_offset(scores, D)
    assert best[0] == -1 and score[0] == pytest.approx(0.7, abs=1e-12)
    assert score[1] == 0.0  # a self-only head is not slash-dominant
    heads = [{"dominant_score": float(s)} for s in score]
    assert slash_dominant_fraction(heads, 0.5) == 0.5


def test_entropy_sink_and_uniform_baseline():
    L = 8
    mask = np.ones((L, L), bool)
    uniform = np.full((1, 1, L, L), 1.0 / L)
    ent, ent_norm, sink = entropy_and_sink(uniform, mask)
    assert (ent[0] == pytest.approx(math.log(L)) and ent_norm[0] == pytest.approx(1.0)
            and sink[0] == pytest.approx(1 / L))
    np.testing.assert_allclose(uniform_baseline(mask, 3), np.full(7, 1.0 / L))
    causal = np.asarray(attention_mask("causal", L))
    sink_only = np.zeros((1, 1, L, L))
    sink_only[..., 0] = 1.0
    ent, _, sink = entropy_and_sink(sink_only, causal)
    assert ent[0] == 0.0 and sink[0] == 1.0


def test_model_inputs_of_each_family():
    tokens_NL = np.arange(16, dtype=np.int32).reshape(2, 8)
    cfg = {name: config_lib.load(None, [f"objective.name={name}", "data.seq_len=8"])
           for name in ("mdm", "r2l", "bd3", "ilm")}
    inputs, kind, rate = model_inputs(tokens_NL, cfg["mdm"], 0.5, 0)
    assert kind == "bidirectional" and rate == 0.5 and (inputs == cfg["mdm"].model.vocab_size - 3).any()
    inputs, kind, rate = model_inputs(tokens_NL, cfg["r2l"], 0.5, 0)
    assert kind == "causal" and rate == 0.0 and inputs[0, 1] == tokens_NL[0, -1]  # BOS, then x_{L-1}
    inputs, kind, rate = model_inputs(tokens_NL, cfg["bd3"], 0.0, 0)  # [x_t ; x], clean x_t at rate 0
    assert kind == "bd3:4" and inputs.shape == (2, 16) and (inputs[:, :8] == inputs[:, 8:]).all()
    inputs, kind, rate = model_inputs(tokens_NL, cfg["ilm"], 0.5, 0)  # nothing dropped: [BOS, x]
    assert kind == "bidirectional" and rate == 0.0 and inputs.shape == (2, 9)
    assert (inputs[:, 0] == cfg["ilm"].model.vocab_size - 2).all() and (inputs[:, 1:] == tokens_NL).all()


@pytest.mark.parametrize("objective", ["bd3", "ao_ar", "latent_order"])
def test_every_family_is_analysed_on_its_own_forward_pass(objective):
    """The captured logits are the objective's own training pass (bd3: the noisy half of [x_t ; x];
    any-order: the identity order with target positions): wrong positions, targets or mask kind in
    the analysis view break this."""
    cfg = config_lib.load(None, [f"objective.name={objective}", "model.d_model=32", "model.n_layers=1",
                                 "model.n_heads=2", "data.seq_len=8"])
    assert all(supported(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name=o.name)))
               for o in objectives.all_objectives())
    target = objectives.of(cfg).target_positions
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=target)
    tokens_NL = np.random.default_rng(0).integers(0, 256, size=(2, 8), dtype=np.int32)
    model_in, kind, _, positions, targets = analysis_view(tokens_NL, cfg, 0.5, 0)
    cap = capture_attention(params, cfg.model, model_in, positions, kind, targets)
    if objective == "bd3":
        want = bd3.noisy_logits(params, jnp.asarray(model_in[:, :8]), jnp.asarray(tokens_NL), cfg, 4)
        got = cap.logits[:, :8]
    else:
        order = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (2, 8))
        want, got = ao_ar.order_logits(params, jnp.asarray(tokens_NL), order, cfg)[0], cap.logits
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-4)
    assert cap.probs.shape[-1] == model_in.shape[1]


# ----------------------------------------------------------------------------- capture on a model

def _inputs(B=3, L=16, seed=0):
    tokens = jax.random.randint(jax.random.key(seed), (B, L), 0, 256)
    return tokens, jnp.broadcast_to(jnp.arange(L), (B, L))


def test_rank_one_construction_gives_rank_one_ness_one():
    params = model.init_params(TINY_MODEL, jax.random.key(0))
    rng = np.random.default_rng(0)
    d, H, D = TINY_MODEL.d_model, TINY_MODEL.n_heads, TINY_MODEL.head_dim
    for i in range(TINY_MODEL.n_layers):
        w = np.array(params[f"layer_{i}"]["attn"]["qkv"])  # [d, 3, H, D]
        for t in (0, 1):  # q and k: W = a u^T, so every token's vector is (x . a) u
            for h in range(H):
                w[:, t, h, :] = np.outer(rng.normal(size=d), rng.normal(size=D))
        params[f"layer_{i}"]["attn"]["qkv"] = jnp.asarray(w)
    tokens, positions = _inputs()
    cap = capture_attention(params, TINY_MODEL, tokens, positions, "causal")
    result = analyze_capture(cap, max_offset=4)
    for h in result.table["heads"]:
        assert abs(h["rank1_q"] - 1.0) < 1e-5 and abs(h["rank1_k"] - 1.0) < 1e-5
    # a random-init model is far from rank one (head_dim 16: isotropic would be ~1/16)
    plain = capture_attention(model.init_params(TINY_MODEL, jax.random.key(0)), TINY_MODEL, tokens, positions,
                              "causal")
    assert rank_one_ness(plain.q_pre[0]).max() < 0.5


@pytest.mark.parametrize("mask_kind", ["causal", "bidirectional"])
def test_capture_leaves_outputs_unchanged_and_reproduces_attention(mask_kind, monkeypatch):
    params = model.init_params(TINY_MODEL, jax.random.key(1))
    tokens, positions = _inputs(seed=1)
    expected = model.apply(params, TINY_MODEL, tokens, positions, mask_kind)
    cap = capture_attention(params, TINY_MODEL, tokens, positions, mask_kind)
    # the same computation (different XLA fusion than op-by-op apply: float32 rounding only)
    np.testing.assert_allclose(cap.logits, np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert cap.probs.shape == (2, 3, 2, 16, 16)
    np.testing.assert_allclose(cap.probs.sum(-1), 1.0, atol=1e-6)
    assert (cap.probs[..., ~cap.mask] == 0).all()

    # probs @ v equals the model's own attention output in every layer (spy on the model's XLA path)
    seen = []
    real = transformer.xla_attention

    def spy(q, k, v, mask, *ops):
        out = real(q, k, v, mask, *ops)
        seen.append((np.asarray(v), np.asarray(out)))
        return out

    monkeypatch.setattr(transformer, "xla_attention", spy)
    with jax.disable_jit():
        transformer.Transformer(TINY_MODEL).apply({"params": params}, tokens, positions, mask_kind)
    assert len(seen) == TINY_MODEL.n_layers
    for layer, (v, out) in enumerate(seen):
        np.testing.assert_allclose(np.einsum("bhls,bshd->blhd", cap.probs[layer], v), out, atol=1e-5)


# ----------------------------------------------------------------------------- CLI on trained runs

def _write_corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = "the king queen sword castle river night morning of and to in a is that it was he".split()
    path.write_text("".join(" ".join(rng.choice(words, size=8)).capitalize() + ".\n" for _ in range(400)))
    return path


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """A 10-step l2r run, and a copy relabelled objective mdm (same parameter tree: analysed with the
    bidirectional mask), so the CLI sees both mask kinds for the cost of one training run."""
    from jaxorder.training.loop import train

    root = tmp_path_factory.mktemp("analysis_runs")
    corpus = _write_corpus(root / "corpus.txt")
    cfg = config_lib.load(None, [
        "objective.name=l2r", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
        "data.source=text", f"data.path={corpus}", "data.seq_len=32", "data.batch_size=8",
        "optimizer.warmup_steps=2", "train.steps=10", "train.log_every=10", "train.eval_every=10",
        "train.checkpoint_every=10", "train.async_checkpointing=false", "eval.batches=1"])
    with contextlib.redirect_stderr(io.StringIO()):
        train(cfg, root / "l2r")
    shutil.copytree(root / "l2r", root / "mdm")
    config_lib.save(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="mdm")),
                    root / "mdm" / "config.yaml")
    return {"l2r": root / "l2r", "mdm": root / "mdm"}


def _main(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_tables_and_plots(tiny_runs, tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, err = _main(["analyze", "attention", tiny_runs["l2r"], "--inputs", "random", "--max-offset",
                               "6", "--windows", "4", "--out", out, "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    table = result["runs"][0]
    assert table["mask_kind"] == "causal" and table["inputs"] == "random" and table["windows"] == 4
    assert len(table["heads"]) == 4 and table["offsets"] == list(range(-6, 7))
    assert all(s is None for h in table["heads"] for s in h["slash_scores"][7:])  # no Δ > 0 under causal
    for name in ("heads.json", "heads.csv", "attention_heads.png", "slash_vs_offset.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "heads.json").read_text())["summary"]["heads"] == 4
    assert len((out / "heads.csv").read_text().splitlines()) == 1 + 4


def test_cli_compare(tiny_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = _main(["analyze", "attention", tiny_runs["l2r"], "--compare", tiny_runs["mdm"],
                               "--windows", "4", "--max-offset", "3", "--mask-rate", "0.5", "--out", out],
                              capsys)
    assert code == 0, err
    assert ("slash-dominant heads" in stdout and "l2r (l2r, corpus)" in stdout
            and "mdm (mdm, corpus, mask 0.5)" in stdout)
    for name in ("compare.json", "compare_offsets.png", "compare_heads.png", "l2r/heads.csv",
                 "mdm/heads.json"):
        assert (out / name).stat().st_size > 0, name
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert [r["mask_kind"] for r in runs] == ["causal", "bidirectional"]
    assert [r["mask_rate"] for r in runs] == [0.0, 0.5]


@pytest.mark.parametrize("case, expected", [("no_checkpoint", "has no checkpoints"),
                                            ("bad_inputs", "--inputs 'noise'")])
def test_cli_bad_input_is_one_line_error(case, expected, tiny_runs, tmp_path, capsys):
    run = tiny_runs["l2r"]
    if case == "no_checkpoint":
        run = tmp_path / "empty"
        run.mkdir()
    extra = ["--inputs", "noise"] if case == "bad_inputs" else []
    code, _, err = _main(["analyze", "attention", run, *extra, "--out", tmp_path / "o"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err


def test_cli_ablate_slash(tiny_runs, tmp_path, capsys):
    out = tmp_path / "abl"
    code, stdout, err = _main(["analyze", "attention", tiny_runs["l2r"], "--windows", "4", "--max-offset",
                               "3", "--ablate-slash", "1", "--ablate-draws", "2", "--out", out], capsys)
    assert code == 0, err
    assert "zero top-1 slash heads" in stdout and "zero 1 random heads (mean of 2 draws)" in stdout
    ablation = json.loads((out / "heads.json").read_text())["ablation"]
    assert ablation["k"] == 1 and len(ablation["random_deltas"]) == 2
    code, _, err = _main(["analyze", "attention", tiny_runs["l2r"], "--ablate-slash", "9", "--out",
                          tmp_path / "bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--ablate-slash 9" in err
