"""Hugging Face export and import (`jaxorder export hf`, `model.init_from: hf:PATH`): the exported
model in transformers (torch, float32, CPU) computes jaxorder's logits and greedy continuations.

Needs the [hf] extra (torch, transformers, safetensors); skipped with that reason otherwise.
Nothing is downloaded: the runs are trained here and loaded from local directories.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only, before transformers is imported

import numpy as np
import pytest

from conftest import TINY, cli_in_process, train_on_corpus

REASON = "needs the [hf] extra: pip install -e '.[hf]'"
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)
pytest.importorskip("safetensors", reason=REASON)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxorder import model, sampling  # noqa: E402
from jaxorder.data import make_data  # noqa: E402
from jaxorder.evaluation.runs import load_params  # noqa: E402
from jaxorder.interop.hf_export import export_hf  # noqa: E402
from jaxorder.objectives import ao_ar  # noqa: E402
from jaxorder.objectives.common import special_ids  # noqa: E402

TOLERANCE = 1e-4  # max |logit difference|, float32 (measured ~2e-6 on these tiny models)


def _exported(tmp_path_factory, tiny_trained_run, objective: str):
    run_dir = tiny_trained_run(objective)
    out = tmp_path_factory.mktemp(f"hf_{objective}") / "hf"
    export_hf(run_dir, out)
    return run_dir, out


@pytest.fixture(scope="module")
def l2r_export(tmp_path_factory, tiny_trained_run):
    return _exported(tmp_path_factory, tiny_trained_run, "l2r")


@pytest.fixture(scope="module")
def mdm_export(tmp_path_factory, tiny_trained_run):
    return _exported(tmp_path_factory, tiny_trained_run, "mdm")


def _windows(run_dir, count: int = 8):
    cfg, params, _ = load_params(run_dir)
    tokens_NL = np.asarray(np.concatenate(make_data(cfg.data).val_batches(count)))[:count]
    assert tokens_NL.shape[0] == count
    return cfg, params, tokens_NL


def _jax_logits(params, cfg, inputs_NL, kind: str, positions_NL=None, targets_NL=None) -> np.ndarray:
    positions_NL = np.broadcast_to(np.arange(inputs_NL.shape[1]), inputs_NL.shape) if positions_NL is None \
        else positions_NL
    return np.asarray(model.apply(params, cfg.model, jnp.asarray(inputs_NL), jnp.asarray(positions_NL), kind,
                                  None if targets_NL is None else jnp.asarray(targets_NL)))


def test_l2r_export_is_stock_llama_with_jaxorders_logits(l2r_export):
    run_dir, out = l2r_export
    cfg, params, tokens_NL = _windows(run_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "LlamaForCausalLM" and not (out / "modeling_jaxorder.py").exists()
    bos = special_ids(cfg.model).bos
    inputs_NL = np.concatenate([np.full_like(tokens_NL[:, :1], bos), tokens_NL[:, :-1]], axis=1)
    with torch.no_grad():
        hf_NLV = hf(torch.tensor(inputs_NL, dtype=torch.long)).logits.numpy()
    ours_NLV = _jax_logits(params, cfg, inputs_NL, "causal")
    diff = float(np.abs(hf_NLV - ours_NLV).max())
    print(f"l2r export: max |logit difference| over 8 windows = {diff:.3g}")
    assert diff < TOLERANCE
    assert np.abs(ours_NLV).max() > 1.0  # a trained model, not all-zero logits


def test_l2r_export_tokenizer_prepends_bos_and_decodes_like_jaxorder(l2r_export):
    run_dir, out = l2r_export
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The king's sword, é!"
    ids = tok(text)["input_ids"]
    assert ids == [258, *text.encode()]  # BOS, then the UTF-8 bytes (byte tokenizer)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.mask_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258, 259)
    card = (out / "README.md").read_text()
    assert "`l2r`" in card and "bits/byte" in card and "LlamaForCausalLM" in card


def test_l2r_export_greedy_generation_matches_jaxorders_ar_sampler(l2r_export):
    run_dir, out = l2r_export
    cfg, params, _ = load_params(run_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    prompt = "The king"
    new = 32
    ids = special_ids(cfg.model)
    row = np.concatenate([np.frombuffer(prompt.encode(), np.uint8).astype(np.int32),
                          np.full(new, ids.mask, np.int32)])[None]
    ours = jax.device_get(sampling.sample(params, cfg, row, jax.random.key(0), "ar",
                                          sampling.SamplerOptions(temperature=0.0, ignore_eos=True)))
    ours_new = [int(t) for t in np.asarray(ours["tokens"][0])[len(prompt):]]
    gen = transformers.GenerationConfig(max_new_tokens=new, do_sample=False,
                                        suppress_tokens=[ids.pad, ids.mask, ids.bos], pad_token_id=ids.pad,
                                        eos_token_id=ids.eos)
    with torch.no_grad():
        hf_out = hf.generate(**tok(prompt, return_tensors="pt"), generation_config=gen)
    hf_new = [int(t) for t in hf_out[0, 1 + len(prompt):]]
    assert len(ours_new) == new and hf_new == ours_new


def test_mdm_export_remote_code_has_jaxorders_bidirectional_logits(mdm_export):
    run_dir, out = mdm_export
    cfg, params, tokens_NL = _windows(run_dir)
    hf = transformers.AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    assert hf.config.attention == "bidirectional" and hf.config.mask_token_id == special_ids(cfg.model).mask
    rng = np.random.default_rng(0)
    masked_NL = np.where(rng.random(tokens_NL.shape) < 0.5, special_ids(cfg.model).mask, tokens_NL)
    with torch.no_grad():
        hf_NLV = hf(torch.tensor(masked_NL, dtype=torch.long)).logits.numpy()
    ours_NLV = _jax_logits(params, cfg, masked_NL, "bidirectional")
    diff = float(np.abs(hf_NLV - ours_NLV).max())
    print(f"mdm export: max |logit difference| over 8 windows = {diff:.3g}")
    assert diff < TOLERANCE
    assert "trust_remote_code=True" in (out / "README.md").read_text()


def test_ao_ar_export_conditions_on_target_positions(tmp_path_factory, tiny_trained_run):
    run_dir, out = _exported(tmp_path_factory, tiny_trained_run, "ao_ar")
    cfg, params, tokens_NL = _windows(run_dir, 4)
    orders_NL = np.asarray(ao_ar.random_orders(jax.random.key(1), *tokens_NL.shape))
    permuted_NL = np.take_along_axis(tokens_NL, orders_NL, axis=1)
    inputs_NL = np.concatenate([np.full_like(tokens_NL[:, :1], special_ids(cfg.model).bos),
                                permuted_NL[:, :-1]], axis=1)
    positions_NL = np.concatenate([np.zeros_like(orders_NL[:, :1]), orders_NL[:, :-1]], axis=1)
    hf = transformers.AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    as_torch = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        hf_NLV = hf(as_torch(inputs_NL), position_ids=as_torch(positions_NL),
                    target_position_ids=as_torch(orders_NL)).logits.numpy()
    ours_NLV = _jax_logits(params, cfg, inputs_NL, "causal", positions_NL, orders_NL)
    assert float(np.abs(hf_NLV - ours_NLV).max()) < TOLERANCE


def test_export_cli_refuses_a_non_empty_output_directory(l2r_export, tmp_path):
    run_dir, _ = l2r_export
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = cli_in_process(["export", "hf", run_dir, tmp_path])
    assert code == 2 and "not an empty directory" in err and (tmp_path / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- model.init_from: hf:PATH

def _val_records(run_dir) -> list[dict]:
    from jaxorder.training.metrics import read_metrics

    return [r for r in read_metrics(run_dir) if r["split"] == "val"]


def test_init_from_hf_round_trip_gives_the_same_validation_loss(l2r_export, text_corpus, tmp_path):
    run_dir, out = l2r_export
    original = _val_records(run_dir)[-1]
    fresh = tmp_path / "fresh"
    train_on_corpus(fresh, (*TINY, "objective.name=l2r", f"model.init_from=hf:{out}"), text_corpus, steps=1)
    start = _val_records(fresh)[0]  # step 0: the imported weights, before any update
    assert start["step"] == 0
    assert abs(start["nll_per_token"] - original["nll_per_token"]) < 1e-6
    assert abs(start["bpb"] - original["bpb"]) < 1e-6


def test_init_from_hf_loads_an_l2r_export_into_mdm_and_ao_ar_models(l2r_export):
    from jaxorder import config as config_lib
    from jaxorder.interop.hf_import import init_params_from_hf

    run_dir, out = l2r_export
    _, l2r_params, _ = load_params(run_dir)
    for objective, target_positions in (("mdm", False), ("ao_ar", True)):
        cfg = config_lib.load(None, (*TINY, f"objective.name={objective}", f"model.init_from=hf:{out}"))
        like = model.init_params(cfg.model, jax.random.key(3), target_positions=target_positions)
        params = init_params_from_hf(cfg.model.init_from, cfg, like, target_positions)
        shared = {k: v for k, v in params.items() if k != "target_embed"}
        assert jax.tree.all(jax.tree.map(np.array_equal, shared, jax.device_get(l2r_params)))
        if target_positions:  # the AR checkpoint has none: the fresh initialization stays
            assert np.array_equal(params["target_embed"], like["target_embed"])


def test_init_from_hf_shape_mismatch_is_one_line_naming_the_tensor(l2r_export, tiny_config_file, tmp_path):
    _, out = l2r_export
    code, _, err = cli_in_process(["train", tiny_config_file, "--run-dir", tmp_path / "wide", "model.d_ff=64",
                                   "train.steps=1", f"model.init_from=hf:{out}"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.layers.0.mlp.gate_proj.weight has shape [128, 32]" in err and "[64, 32]" in err


def test_r2l_export_reads_reversed_text_as_its_card_says(tmp_path_factory, tiny_trained_run):
    run_dir, out = _exported(tmp_path_factory, tiny_trained_run, "r2l")
    cfg, params, tokens_NL = _windows(run_dir, 4)
    card = (out / "README.md").read_text()
    assert "right to left" in card and "[BOS] + ids[::-1]" in card
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    bos = special_ids(cfg.model).bos
    reversed_NL = tokens_NL[:, ::-1]
    inputs_NL = np.concatenate([np.full_like(tokens_NL[:, :1], bos), reversed_NL[:, :-1]], axis=1)
    with torch.no_grad():
        logp_NLV = torch.log_softmax(hf(torch.tensor(inputs_NL, dtype=torch.long)).logits, -1).numpy()
    hf_nll_N = -np.take_along_axis(logp_NLV, reversed_NL[..., None], -1)[..., 0].sum(1)
    from jaxorder.objectives import r2l

    ours_N = np.asarray(r2l.nll(params, {"tokens": jnp.asarray(tokens_NL)}, None, cfg))
    np.testing.assert_allclose(hf_nll_N, ours_N, rtol=1e-5)


@pytest.mark.slow
def test_bd3_export_takes_the_two_half_layout(tmp_path_factory, tiny_trained_run):
    run_dir, out = _exported(tmp_path_factory, tiny_trained_run, "bd3")
    cfg, params, tokens_NL = _windows(run_dir, 4)
    hf = transformers.AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    assert hf.config.attention == f"bd3:{cfg.objective.block_size}"
    rng = np.random.default_rng(0)
    noisy_NL = np.where(rng.random(tokens_NL.shape) < 0.5, special_ids(cfg.model).mask, tokens_NL)
    inputs_N2L = np.concatenate([noisy_NL, tokens_NL], axis=1)
    positions_N2L = np.tile(np.arange(tokens_NL.shape[1]), (len(tokens_NL), 2))
    with torch.no_grad():
        hf_NLV = hf(torch.tensor(inputs_N2L, dtype=torch.long),
                    position_ids=torch.tensor(positions_N2L, dtype=torch.long)).logits.numpy()
    ours_NLV = _jax_logits(params, cfg, inputs_N2L, hf.config.attention, positions_N2L)
    assert float(np.abs(hf_NLV - ours_NLV).max()) < TOLERANCE


def test_init_from_hf_refuses_bias_tensors(l2r_export, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from jaxorder import config as config_lib
    from jaxorder.config import ConfigError
    from jaxorder.interop.hf_import import init_params_from_hf

    _, out = l2r_export
    biased = shutil.copytree(out, tmp_path / "biased")
    state = load_file(biased / "model.safetensors")
    state["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)  # as Qwen2 has
    save_file(state, biased / "model.safetensors")
    cfg = config_lib.load(None, (*TINY, f"model.init_from=hf:{biased}"))
    like = model.init_params(cfg.model, jax.random.key(0))
    with pytest.raises(ConfigError, match="q_proj.bias is a bias"):
        init_params_from_hf(cfg.model.init_from, cfg, like, False)
