"""AR (l2r / r2l) sampling with a KV cache: cached = uncached, batching, EOS, filtering, CLI.

A tiny randomly initialised model (d_model 32, 2 layers) is enough for everything except the CLI
test, which trains 3 steps on a tiny corpus.
"""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.data import ByteTokenizer
from jaxorder.model import decode
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import SamplerOptions
from jaxorder.sampling.ar import filter_logits

from conftest import cli_in_process, train_on_corpus

TINY_L2R = ("objective.name=l2r", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.seq_len=32")
TOK = ByteTokenizer()
PROMPTS = [TOK.encode("To be"), [], TOK.encode("or not to")]  # different lengths, one empty
GREEDY = SamplerOptions(temperature=0.0, ignore_eos=True)
N = 10  # generated tokens (one shape: the tests share compilations)


def generate(params, cfg, prompts, max_new: int, key, options: SamplerOptions, direction: str = "l2r",
             collect_logits: bool = False) -> dict:
    """The ar sampler on rows of `prompts` + `max_new` MASKs (ragged rows end in PAD), for a run of
    `direction`; ``tokens`` as lists of the kept ids (prompt and generated, reading order)."""
    import dataclasses

    from conftest import ar_rows

    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name=direction))
    options = dataclasses.replace(options, collect_logits=collect_logits)
    out = jax.device_get(sampling.sample(params, cfg, ar_rows(cfg, prompts, max_new), key, "ar", options))
    pad = special_ids(cfg.model).pad
    out["tokens"] = [np.asarray(row)[np.asarray(row) != pad] for row in out["tokens"]]
    return out


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, TINY_L2R)
    return cfg, model.init_params(cfg.model, jax.random.key(0))


def _full_logits(params, cfg, seq_BT):
    """Uncached reference: one causal forward pass over the buffer (slot s predicts slot s + 1)."""
    x = jnp.asarray(seq_BT[:, :-1])
    return np.asarray(model.apply(params, cfg.model, x, jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape),
                                  "causal"))


def test_decode_step_matches_full_forward_in_chunks(tiny):
    cfg, params = tiny
    toks = jax.random.randint(jax.random.key(1), (2, 13), 0, 256)
    pos = jnp.broadcast_to(jnp.arange(13), toks.shape)
    want = np.asarray(model.apply(params, cfg.model, toks, pos, "causal"))
    scanned = dict(params)  # the scan_layers layout ("layers": stacked) decodes as well
    scanned["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                     *[scanned.pop(f"layer_{i}") for i in range(2)])

    @jax.jit
    def chunked(p):
        cache, got = decode.init_cache(cfg.model, 2, 16), []
        for a, b in ((0, 5), (5, 6), (6, 13)):
            lg, cache = decode.decode_step(p, cfg.model, cache, toks[:, a:b], pos[:, a:b])
            got.append(lg)
        return jnp.concatenate(got, axis=1), cache["layer_1"]["attn"]["cache_index"]

    for p in (params, scanned):
        got, index = chunked(p)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
        assert int(index) == 13


@pytest.mark.parametrize("direction", ["l2r", "r2l"])
def test_cached_equals_uncached_at_temperature_zero(tiny, direction):
    """Same tokens exactly, logits within 1e-5 (and both equal one full forward pass over the result)."""
    cfg, params = tiny
    key = jax.random.key(0)
    a = generate(params, cfg, PROMPTS, N, key, GREEDY, direction, collect_logits=True)
    uncached = SamplerOptions(temperature=0.0, ignore_eos=True, cache=False)
    b = generate(params, cfg, PROMPTS, N, key, uncached, direction, collect_logits=True)
    assert np.array_equal(a["seq"], b["seq"])
    assert all(np.array_equal(x, y) for x, y in zip(a["tokens"], b["tokens"]))
    prefill = 1 + min(len(p) for p in PROMPTS)
    np.testing.assert_allclose(a["logits"][:, prefill:], b["logits"][:, prefill:], atol=1e-5)
    np.testing.assert_allclose(a["logits"][:, prefill:], _full_logits(params, cfg, a["seq"])[:, prefill - 1:],
                               atol=1e-5)
    assert a["generated"].tolist() == [N] * 3 and a["nfe"] == b["nfe"] == 1 + a["steps"]
    for p, t in zip(PROMPTS, a["tokens"]):  # reading order: l2r continues the prompt, r2l precedes it
        assert len(t) == len(p) + N
        assert list(t[:len(p)] if direction == "l2r" else t[len(t) - len(p):]) == list(p)
    # greedy = argmax of the logits that chose each generated slot (PAD/MASK/BOS never generated)
    ids = special_ids(cfg.model)
    for r, p in enumerate(PROMPTS):
        slots = np.arange(1 + len(p), 1 + len(p) + N)
        lg = a["logits"][r, slots].copy()
        lg[:, [ids.pad, ids.mask, ids.bos]] = -np.inf
        assert np.array_equal(a["seq"][r, slots], lg.argmax(-1))


def test_batched_prompts_are_independent_rows(tiny):
    """A row's greedy tokens do not depend on the other rows (order of the batch, a batch of one)."""
    cfg, params = tiny
    batched = generate(params, cfg, PROMPTS, N, jax.random.key(0), GREEDY)["tokens"]
    permuted = generate(params, cfg, PROMPTS[::-1], N, jax.random.key(0), GREEDY)["tokens"][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(batched, permuted))
    alone = generate(params, cfg, PROMPTS[2:], N, jax.random.key(0), GREEDY)["tokens"][0]
    assert np.array_equal(alone, batched[2])


@pytest.mark.parametrize("direction", ["l2r", "r2l"])
def test_stops_at_eos(tiny, direction):
    """Swap the head columns of EOS and the first greedy token of row 0: greedy then emits EOS there."""
    cfg, params = tiny
    eos = special_ids(cfg.model).eos
    ref = generate(params, cfg, PROMPTS, N, jax.random.key(0), GREEDY, direction)
    p0 = len(PROMPTS[0])
    gen0 = ref["seq"][0, 1 + p0:1 + p0 + N]
    j = 4
    tok = int(gen0[j])
    assert eos not in gen0[:j + 1]
    j = int(np.argmax(gen0 == tok))  # first occurrence
    head = np.array(params["head"])
    head[:, [tok, eos]] = head[:, [eos, tok]]
    swapped = {**params, "head": jnp.asarray(head)}
    for cache in (True, False):
        out = generate(swapped, cfg, PROMPTS, N, jax.random.key(0),
                       SamplerOptions(temperature=0.0, cache=cache), direction)
        assert bool(out["eos"][0]) and int(out["generated"][0]) == j + 1
        assert len(out["tokens"][0]) == p0 + N  # the EOS kept, EOS padding after it (sampling.eos)
        want = np.concatenate([np.asarray(PROMPTS[0][::-1] if direction == "r2l" else PROMPTS[0], np.int32),
                               gen0[:j], np.full(N - j, eos, np.int32)])
        assert np.array_equal(out["tokens"][0], want[::-1] if direction == "r2l" else want)
    # EOS ignored: the row continues with `tok`'s old place taken by EOS
    on = generate(swapped, cfg, PROMPTS, N, jax.random.key(0), GREEDY, direction)
    assert not on["eos"].any() and on["generated"].tolist() == [N] * 3


def _template_rows(cfg) -> np.ndarray:
    """Two rows in generation order: prompt "ab", MASKs with givens among and after them; no prompt,
    givens, a last MASK, then PAD. Reading order returned (r2l runs: reversed)."""
    M, P = special_ids(cfg.model).mask, special_ids(cfg.model).pad
    a, b, c, d, e = (int(x) for x in TOK.encode("abcde"))
    rows = np.array([[a, b, M, M, c, M, M, M, d, e, M, e],
                     [M, c, M, M, M, d, e, M, M, M, P, P]], np.int32)
    return rows[:, ::-1].copy() if cfg.objective.name == "r2l" else rows


@pytest.mark.parametrize("direction", ["l2r", "r2l"])
def test_template_givens_are_kept_and_teacher_forced(tiny, direction):
    """Fixed tokens among (and after) the MASKs come back unchanged, and every generated token is the
    greedy choice after the row's final tokens before it in the run's order, givens included: a given
    is fed when its slot comes. Cached = uncached."""
    import dataclasses

    cfg, params = tiny
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name=direction))
    ids = special_ids(cfg.model)
    rows = _template_rows(cfg)
    options = dataclasses.replace(GREEDY, collect_logits=True)
    out = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(0), "ar", options))
    plain = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(0), "ar",
                                           dataclasses.replace(GREEDY, cache=False)))
    assert np.array_equal(out["tokens"], plain["tokens"])
    masked = rows == ids.mask
    assert np.array_equal(out["tokens"][~masked], rows[~masked])  # givens, prompt and PAD unchanged
    assert out["generated"].tolist() == masked.sum(axis=1).tolist()
    gen_order = out["tokens"][:, ::-1] if direction == "r2l" else out["tokens"]
    seq = np.concatenate([np.full((2, 1), ids.bos, np.int32), gen_order], axis=1)
    assert np.array_equal(out["seq"][:, 1:][gen_order != ids.pad], gen_order[gen_order != ids.pad])
    logits = _full_logits(params, cfg, seq).copy()  # slot s predicts row position s (generation order)
    logits[..., [ids.pad, ids.mask, ids.bos]] = -np.inf
    gen_masked = masked[:, ::-1] if direction == "r2l" else masked
    assert np.array_equal(logits.argmax(-1)[gen_masked], gen_order[gen_masked])


def test_template_givens_stay_after_eos(tiny):
    """A row that stops at a generated EOS gets EOS at its later MASKs; its later givens stay."""
    cfg, params = tiny
    ids = special_ids(cfg.model)
    rows = _template_rows(cfg)
    greedy = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(0), "ar", GREEDY))
    first = int(greedy["tokens"][0, 2])
    head = np.array(params["head"])
    head[:, [first, ids.eos]] = head[:, [ids.eos, first]]  # EOS is now row 0's greedy token at position 2
    swapped = {**params, "head": jnp.asarray(head)}
    for cache in (True, False):
        out = jax.device_get(sampling.sample(swapped, cfg, rows, jax.random.key(0), "ar",
                                             SamplerOptions(temperature=0.0, cache=cache)))
        want = np.where(rows[0] == ids.mask, ids.eos, rows[0])
        assert bool(out["eos"][0]) and int(out["generated"][0]) == 1
        assert np.array_equal(out["tokens"][0], want), cache


def test_template_errors(tiny):
    """PAD inside a row is an error; the speculative sampler continues prompts only."""
    cfg, params = tiny
    ids = special_ids(cfg.model)
    rows = _template_rows(cfg)
    bad = rows.copy()
    bad[1, 3] = ids.pad
    with pytest.raises(config_lib.ConfigError, match="PAD among its tokens"):
        sampling.sample(params, cfg, bad, jax.random.key(0), "ar", GREEDY)
    draft = sampling.Companion(cfg, params, "draft")
    with pytest.raises(config_lib.ConfigError, match="need the ar sampler"):
        sampling.sample(params, cfg, rows, jax.random.key(0), "speculative", SamplerOptions(draft="draft"),
                        companions={"draft": draft})


def test_banned_tokens_are_never_generated(tiny):
    """Swap the head columns of a banned id (PAD, MASK, BOS) and row 0's first greedy token: the banned
    id then has the largest logit at that slot, yet greedy decoding (cached or not) never emits it."""
    cfg, params = tiny
    ids = special_ids(cfg.model)
    banned = [ids.pad, ids.mask, ids.bos]
    first = 1 + len(PROMPTS[0])  # row 0's first generated slot in the buffer
    tok = int(generate(params, cfg, PROMPTS, N, jax.random.key(0), GREEDY)["seq"][0, first])
    for bad in banned:
        head = np.array(params["head"])
        head[:, [tok, bad]] = head[:, [bad, tok]]
        swapped = {**params, "head": jnp.asarray(head)}
        for cache in (True, False):
            options = SamplerOptions(temperature=0.0, ignore_eos=True, cache=cache)
            out = generate(swapped, cfg, PROMPTS, N, jax.random.key(0), options, collect_logits=True)
            assert int(np.argmax(out["logits"][0, first])) in banned  # without the ban it would be emitted
            for r, p in enumerate(PROMPTS):
                assert not np.isin(out["seq"][r, 1 + len(p):1 + len(p) + N], banned).any(), (bad, cache, r)


def test_filter_logits_top_k_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    kept = lambda x: np.isfinite(np.asarray(x)).tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [[True, True, False, False],
                                                        [False, False, True, True]]
    assert kept(filter_logits(logits, 1.0, 0, 0.5)) == [[True, False, False, False],
                                                        [False, False, True, True]]
    assert kept(filter_logits(logits, 1.0, 0, 0.7)) == [[True, True, False, False],
                                                        [False, False, True, True]]
    assert kept(filter_logits(logits, 1.0, 0, 1e-6)) == [[True, False, False, False],
                                                         [False, False, False, True]]
    np.testing.assert_allclose(filter_logits(logits, 2.0, 0, 1.0), logits / 2.0)
    assert kept(filter_logits(logits, 1.0, 3, 0.6)) == [[True, True, False, False],
                                                        [False, False, True, True]]


def test_seeds_temperature_and_top_k_one(tiny):
    cfg, params = tiny
    t1 = SamplerOptions(temperature=1.0, ignore_eos=True)
    a, b, c = (generate(params, cfg, PROMPTS, N, jax.random.key(s), t1)["seq"] for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    greedy = generate(params, cfg, PROMPTS, N, jax.random.key(0), GREEDY)["seq"]
    top_1 = SamplerOptions(top_k=1, ignore_eos=True)
    top1 = generate(params, cfg, PROMPTS, N, jax.random.key(5), top_1)["seq"]
    assert np.array_equal(greedy, top1)


def test_too_long_is_a_clear_error(tiny):
    cfg, params = tiny
    with pytest.raises(config_lib.ConfigError, match="max_len"):
        generate(params, cfg, [[1, 2, 3]], cfg.model.max_len, jax.random.key(0), GREEDY)
    with pytest.raises(config_lib.ConfigError, match="top_p"):
        generate(params, cfg, [[1]], 4, jax.random.key(0), SamplerOptions(top_p=0.0))


def test_cli_sample_l2r_and_r2l_runs(tmp_path, repeated_corpus):
    run = tmp_path / "l2r"
    train_on_corpus(run, TINY_L2R, repeated_corpus)
    code, out, _ = cli_in_process(["sample", run, "--prompt", "the cat", "--length", "16", "--num-samples",
                                   "2", "--top-k", "20", "--top-p", "0.9", "--seed", "1", "--ignore-eos",
                                   "--json"])
    assert code == 0
    res = json.loads(out)
    assert res["sampler"] == "ar" and res["generated_tokens"] == 2 * 9 and res["forward_passes"] == 10
    assert all(s["text"].startswith("the cat") and len(s["tokens"]) == 16 for s in res["samples"])
    # the same weights read as an r2l run: the prompt is the end of the text
    r2l = tmp_path / "r2l"
    shutil.copytree(run, r2l)
    (r2l / "config.yaml").write_text((r2l / "config.yaml").read_text().replace("name: l2r", "name: r2l"))
    # compiled above
    code, out, err = cli_in_process(["sample", r2l, "--prompt", "the mat", "--length", "16", "--num-samples",
                                     "2", "--top-k", "20", "--top-p", "0.9", "--seed", "1",
                                     "--ignore-eos"])
    assert code == 0 and out.startswith("--- sample 1/2") and out.count("the mat\n") == 2 and "ar, " in err
    code, _, err = cli_in_process(["sample", run, "--sampler", "confidence"])
    assert code == 2 and "unknown sampler 'confidence'; for l2r runs use one of ar" in err
    code, out, _ = cli_in_process(["sample", run, "--template", "a [MASK:3] b", "--ignore-eos", "--json"])
    text = json.loads(out)["samples"][0]["text"]  # the givens are kept (teacher-forced when reached)
    assert code == 0 and text.startswith("a ") and text.endswith(" b")
