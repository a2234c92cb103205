"""`jaxorder export hf RUN_DIR OUT`: a run's newest checkpoint as a Hugging Face model directory.

Written: `model.safetensors` (float32, Llama tensor names: `hf_weights`), `config.json`,
`tokenizer.json` (+ `tokenizer_config.json`, special tokens PAD/MASK/BOS/EOS as the run's last
four ids), `README.md` (model card: objective, reading order, data, yardstick) and:
  - causal runs (l2r, r2l): a stock `LlamaForCausalLM` (the jaxorder model is Llama exactly, see
    hf_weights) with `generation_config.json` (PAD, MASK, BOS suppressed as jaxorder's AR sampler
    does). l2r's tokenizer prepends BOS, so `generate` continues a prompt as `jaxorder sample` does;
    an r2l model reads the text reversed (the card says how);
  - every other family: `modeling_jaxorder.py`, a `trust_remote_code` module with the forward
    pass (its mask kind, the MASK id, target positions for any-order models).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from jaxorder import objectives
from jaxorder.config import Config, ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.data.bpe import SPECIALS
from jaxorder.data.bpe import _bytes_to_unicode as bytes_to_unicode
from jaxorder.evaluation.runs import load_params, run_tokenizer
from jaxorder.interop.extras import require
from jaxorder.interop.hf_weights import to_hf_state
from jaxorder.objectives.common import special_ids

REMOTE_CODE = Path(__file__).with_name("modeling_jaxorder.py")
PURPOSE = "jaxorder export hf"


def is_stock_llama(cfg: Config) -> bool:
    """Causal families without extra inputs export as LlamaForCausalLM."""
    objective = objectives.of(cfg)
    return objective.sampling == "ar" and not objective.target_positions


def attention_kind(cfg: Config) -> str:
    """The mask kind a remote-code export's forward pass uses by default (the training one)."""
    objective = objectives.of(cfg)
    if objective.sampling == "masked":
        return "bidirectional"
    if objective.sampling == "block":
        return f"bd3:{cfg.objective.block_size}"
    return "causal"


def byte_level_tokenizer() -> Any:
    """jaxorder's byte tokenizer as an HF `tokenizers` object: ids 0..255 are the bytes (byte-level
    symbols, no merges), then the four specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # no regex split: without merges every byte is its own token anyway
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return tok


def hf_tokenizer(run_dir: Path, cfg: Config, prepend_bos: bool) -> Any:
    """The run's tokenizer as a transformers PreTrainedTokenizerFast with its special tokens."""
    from tokenizers import Tokenizer, processors

    transformers = require("transformers", "hf", PURPOSE)
    saved = run_dir / "tokenizer.json"
    tok = run_tokenizer(cfg, run_dir)
    hf = byte_level_tokenizer() if isinstance(tok, ByteTokenizer) else Tokenizer.from_str(tok.to_json())
    ids = special_ids(cfg.model)
    if [hf.token_to_id(s) for s in SPECIALS] != list(ids):
        raise ConfigError(f"{saved}: the tokenizer's specials are not the model's last four ids {list(ids)}")
    if prepend_bos:  # the causal models read [BOS, x_0, ...]
        hf.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                          special_tokens=[("<|bos|>", ids.bos)])
    pad, mask, bos, eos = SPECIALS
    return transformers.PreTrainedTokenizerFast(tokenizer_object=hf, pad_token=pad, mask_token=mask,
                                                bos_token=bos, eos_token=eos,
                                                model_max_length=cfg.model.max_len)


def llama_config(cfg: Config) -> dict:
    m, ids = cfg.model, special_ids(cfg.model)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "intermediate_size": m.ff_dim,
        "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_heads,
        "head_dim": m.head_dim, "hidden_act": "silu", "max_position_embeddings": m.max_len,
        "rms_norm_eps": 1e-6, "rope_theta": m.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_base},
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "bos_token_id": ids.bos, "eos_token_id": ids.eos, "pad_token_id": ids.pad, "torch_dtype": "float32",
        "dtype": "float32", "use_cache": True,
    }


def remote_config(cfg: Config) -> dict:
    m, ids = cfg.model, special_ids(cfg.model)
    return {
        "architectures": ["JaxorderModel"], "model_type": "jaxorder",
        "auto_map": {"AutoConfig": "modeling_jaxorder.JaxorderConfig",
                     "AutoModel": "modeling_jaxorder.JaxorderModel",
                     "AutoModelForMaskedLM": "modeling_jaxorder.JaxorderModel"},
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "intermediate_size": m.ff_dim,
        "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "max_position_embeddings": m.max_len, "rope_theta": m.rope_base, "rms_norm_eps": 1e-6,
        "objective": cfg.objective.name, "attention": attention_kind(cfg),
        "target_positions": objectives.of(cfg).target_positions, "mask_token_id": ids.mask,
        "query_positions": m.query_positions,
        "bos_token_id": ids.bos, "eos_token_id": ids.eos, "pad_token_id": ids.pad, "torch_dtype": "float32",
        "dtype": "float32",
    }


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(run_dir: Path, cfg: Config, step: int, stock: bool) -> str:
    """README.md: what the model is, how it reads text, what it was trained on and scores."""
    objective = objectives.of(cfg)
    d, m = cfg.data, cfg.model
    eval_path = run_dir / "eval.json"
    result = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    data = (d.source + (f" ({d.path})" if d.path else "")
            + f", {d.tokenizer} tokenizer, windows of {d.seq_len}")
    lines = ["---", "library_name: transformers", "tags: [jaxorder, " + cfg.objective.name + "]", "---", "",
             f"# {run_dir.name}", "",
             f"A jaxorder `{cfg.objective.name}` model (step {step}), exported by `jaxorder export hf`.", "",
             f"- objective: `{cfg.objective.name}` (sampler family `{objective.sampling}`)",
             f"- model: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, d_ff {m.ff_dim}, "
             f"vocabulary {m.vocab_size}, RoPE base {m.rope_base:g}, max length {m.max_len}",
             f"- data: {data}", f"- training: {cfg.train.steps} steps of {d.batch_size} windows"]
    if result:
        lines.append(f"- yardstick: {_fmt(result.get('bpb'))} ± {_fmt(result.get('bpb_stderr'))} bits/byte "
                     f"on {result.get('windows')} validation windows ({result.get('kind')})")
    else:
        lines.append("- yardstick: not recorded (the run has no eval.json)")
    ids = special_ids(m)
    lines += ["", f"Special ids: PAD {ids.pad}, MASK {ids.mask}, BOS {ids.bos}, EOS {ids.eos}.", ""]
    if stock and objective.reading_order == "r2l":
        lines += ["**Direction: right to left.** The model is a stock `LlamaForCausalLM` trained on "
                  "reversed windows: feed `[BOS] + ids[::-1]` and reverse what it generates. The tokenizer "
                  "adds no BOS for you.", ""]
    elif stock:
        lines += ["A stock `LlamaForCausalLM` reading left to right; the tokenizer prepends BOS, and "
                  "`generation_config.json` suppresses PAD, MASK and BOS as jaxorder's sampler does:", "",
                  "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(DIR)",
                  "model = AutoModelForCausalLM.from_pretrained(DIR)",
                  "out = model.generate(**tok('To be', return_tensors='pt'), max_new_tokens=32, "
                  "do_sample=False)", "print(tok.decode(out[0], skip_special_tokens=True))", "```", ""]
    else:
        lines += [f"Not autoregressive: load with `AutoModel.from_pretrained(DIR, trust_remote_code=True)` "
                  f"(`modeling_jaxorder.py`). `model(input_ids).logits` is the network's forward pass with "
                  f"attention `{attention_kind(cfg)}`.",
                  "Masked diffusion: put MASK at the positions to predict and set the MASK logit to -inf "
                  "(SUBS). Any-order models: pass `position_ids` (the permuted positions of the slots, BOS "
                  "at 0) and `target_position_ids` (the position each slot predicts). Block diffusion: "
                  "the input is `[x_t ; x]` (length 2n, positions 0..n-1 twice).", ""]
    return "\n".join(lines)


def export_hf(run_dir: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Writes the HF model directory `out` from the run's newest checkpoint; returns a summary."""
    safetensors_numpy = require("safetensors.numpy", "hf", PURPOSE)
    transformers = require("transformers", "hf", PURPOSE)
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory; choose a new output directory")
    cfg, params, step = load_params(run_dir)
    if cfg.model.positions != "rope":  # both exported architectures are Llama-family: RoPE only
        raise ConfigError(f"{run_dir}: model.positions={cfg.model.positions} cannot be exported (the Hugging "
                          f"Face architectures use RoPE); export a model.positions=rope run")
    if cfg.model.target_adaln:  # the remote-code module has no adaLN maps
        raise ConfigError(f"{run_dir}: model.target_adaln runs cannot be exported; export a run without it")
    stock = is_stock_llama(cfg)
    state = to_hf_state(params, cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = llama_config(cfg) if stock else remote_config(cfg)
    config["jaxorder"] = {"objective": cfg.objective.name, "reading_order": objectives.of(cfg).reading_order,
                          "step": step}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if stock:
        ids = special_ids(cfg.model)
        transformers.GenerationConfig(bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad,
                                      suppress_tokens=[ids.pad, ids.mask, ids.bos]).save_pretrained(out)
    else:
        shutil.copyfile(REMOTE_CODE, out / "modeling_jaxorder.py")
    prepend_bos = stock and objectives.of(cfg).reading_order == "l2r"
    hf_tokenizer(run_dir, cfg, prepend_bos).save_pretrained(out)
    (out / "README.md").write_text(model_card(run_dir, cfg, step, stock) + "\n")
    return {"run": run_dir.name, "step": step, "out": str(out), "objective": cfg.objective.name,
            "architecture": config["architectures"][0], "remote_code": not stock,
            "tensors": len(state), "files": sorted(p.name for p in out.iterdir())}
