"""learned_order's sampler (sampling/learned_order.py) against brute force, and its options, config
checks and end-to-end runs. The tiny set-up and the exact terms are those of test_learned_order.py."""
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from test_learned_order import EOS, MASK, log_joint, perms, policy_terms, random_params, tiny_cfg

from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.objectives import OWN_PARAMS, ao_ar
from jaxorder.objectives import learned_order as lo
from jaxorder.sampling.ar import banned_tokens

from conftest import TINY, cli_in_process, train_on_corpus

# ------------------------------------------------------------------------------- sampling

def sample(params, cfg, tokens_BL, key, **options):
    sampler = sampling.resolve(cfg, options.pop("sampler", None))
    out = sampling.sample(params, cfg, tokens_BL, key, sampler, sampling.make_options(sampler, options))
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("transitions", [False, True])
def test_policy_sampler_draws_the_joint_exactly(transitions):
    """Chi-square of (sigma, x) frequencies against p(x, sigma) (the token head restricted to the
    tokens samplers may generate, as every sampler does) at temperature 1, n = 3. Catches a policy
    that samples a generated position again, at another temperature, from the wrong stream (with
    target positions), or a token drawn for another slot; and logprob + order_logprob = log p(x, sigma).
    With policy_transitions: a sampler that reads the table at another row than training does."""
    n = 3
    cfg = tiny_cfg(n, **{"objective.policy_transitions": transitions})
    params = random_params(cfg, seed=4)
    draws = 24000
    out = sample(params, cfg, np.full((draws, n), MASK, np.int32), jax.random.key(7), ignore_eos=True)
    symbols = (0, 1, EOS)  # what may be generated
    assert set(np.unique(out["tokens"])) <= set(symbols)
    all_x = np.array(list(itertools.product(symbols, repeat=n)), np.int32)
    P = perms(n)
    x_N = np.repeat(all_x, len(P), axis=0)
    o_N = np.tile(P, (len(all_x), 1))
    pol = np.asarray(policy_terms(params, jnp.asarray(x_N), jnp.asarray(o_N), cfg), np.float64).sum(1)
    logits, targets = ao_ar.order_logits(params, jnp.asarray(x_N), jnp.asarray(o_N), cfg)
    logp = jax.nn.log_softmax(jnp.where(banned_tokens(cfg.model), -jnp.inf, logits), axis=-1)
    tok = np.asarray(jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], np.float64).sum(1)
    expected = np.exp(pol + tok)
    np.testing.assert_allclose(expected.sum(), 1.0, atol=1e-5)
    cell = {(tuple(x), tuple(o)): i for i, (x, o) in enumerate(zip(x_N, o_N))}
    counts = np.bincount([cell[(tuple(x), tuple(o))] for x, o in zip(out["tokens"], out["order"])],
                         minlength=len(expected))
    assert stats.chisquare(counts, expected / expected.sum() * draws).pvalue > 1e-3
    lp, _ = log_joint(params, jnp.asarray(out["tokens"][:64]), jnp.asarray(out["order"][:64])[:, None], cfg)
    np.testing.assert_allclose(out["logprob"][:64] + out["order_logprob"][:64], np.asarray(lp)[:, 0],
                               atol=1e-4)


def test_cached_sampler_equals_the_uncached_reference():
    """Same key, with and without KV caches: same orders and tokens, token for token, on ragged
    prompts/templates (one row with nothing fixed; prefill 0) and on rows that all fix a token
    (prefill 1). Catches a cache written with the wrong target (policy stream with targets), a
    slot/position mix-up in either stream, and a policy that may choose a fixed position."""
    n = 4
    cfg = tiny_cfg(n, **{"objective.policy_transitions": True})
    params = random_params(cfg, seed=5)
    ragged = np.full((6, n), MASK, np.int32)
    ragged[1, 2] = 1
    ragged[2, [0, 3]] = [0, 1]
    ragged[3:, 1] = 0
    for tokens, options in ((ragged, {"temperature": 0.7, "top_k": 2}), (ragged[1:], {})):
        cached = sample(params, cfg, tokens, jax.random.key(11), cache=True, **options)
        plain = sample(params, cfg, tokens, jax.random.key(11), cache=False, **options)
        np.testing.assert_array_equal(cached["order"], plain["order"])
        np.testing.assert_array_equal(cached["tokens"], plain["tokens"])
        np.testing.assert_allclose(cached["logprob"], plain["logprob"], atol=1e-4)
        fixed = tokens != MASK
        np.testing.assert_array_equal(cached["tokens"][fixed], tokens[fixed])
        for row, order in zip(fixed, cached["order"]):  # fixed positions first, in position order
            np.testing.assert_array_equal(order[:row.sum()], np.flatnonzero(row))
            assert sorted(order) == list(range(n))


# ------------------------------------------------------------------------------- config and CLI

def test_entropy_weight_schedule_runs_from_start_to_end_then_holds():
    """beta(step) goes linearly from q_entropy_start to q_entropy_end over q_entropy_steps (0: train.steps)
    and is held after; no step (evaluation) is always the ELBO's beta = 1. Catches an end value ignored
    (the old fixed end 1), a schedule that keeps moving past its steps, and beta < 1 leaking into eval."""
    cfg = tiny_cfg(4, **{"objective.q_entropy_start": 1.0, "objective.q_entropy_end": 0.2,
                         "objective.q_entropy_steps": 100, "train.steps": 400})
    got = [float(lo.entropy_weight(jnp.asarray(s), cfg)) for s in (0, 50, 100, 300)]
    np.testing.assert_allclose(got, [1.0, 0.6, 0.2, 0.2], rtol=1e-6)
    assert float(lo.entropy_weight(None, cfg)) == 1.0
    whole_run = tiny_cfg(4, **{"objective.q_entropy_start": 2.0, "train.steps": 400})
    np.testing.assert_allclose([float(lo.entropy_weight(jnp.asarray(s), whole_run)) for s in (0, 200, 400)],
                               [2.0, 1.5, 1.0], rtol=1e-6)
    delayed = tiny_cfg(4, **{"objective.q_entropy_end": 0.0, "objective.q_entropy_delay": 300,
                             "train.steps": 400})
    np.testing.assert_allclose([float(lo.entropy_weight(jnp.asarray(s), delayed))
                                for s in (0, 300, 350, 400)], [1.0, 1.0, 0.5, 0.0], rtol=1e-6)


def test_q_init_starts_at_a_named_order(tmp_path):
    """q_init=perm:... / perm@FILE: q's mode at init is that order, its global scores -scale * rank (the
    positions past the window, max_len 8 here, keep their place after it). Catches scores set by position
    instead of by rank (argsort vs its inverse: equal for l2r and swaps, not for a 3-cycle)."""
    x = jnp.zeros((1, 6), jnp.int32)
    (tmp_path / "order.txt").write_text("perm:2,0,1,5,3,4,6-\n")
    for q_init in ("perm:2,0,1,5,3,4,6-", f"perm@{tmp_path / 'order.txt'}"):
        cfg = tiny_cfg(6, **{"objective.q_init": q_init, "objective.q_init_scale": 2.0})
        g = np.asarray(nn.meta.unbox(lo.own_params(cfg, jax.random.key(1)))["q_global"])
        np.testing.assert_allclose(g, [-2.0, -4.0, 0.0, -8.0, -10.0, -6.0, -12.0, -14.0])
        params = {OWN_PARAMS: nn.meta.unbox(lo.own_params(cfg, jax.random.key(1)))}
        np.testing.assert_array_equal(np.argsort(-np.asarray(lo.q_scores(params, x))[0]), [2, 0, 1, 5, 3, 4])


@pytest.mark.parametrize("q_init, message", [
    ("perm:1,1-", "q_init: index 0 is missing"),
    ("perm:0,9,1-", "index 9 is out of range for a window of 8"),
    ("perm:0,0,1-", "index 0 appears twice"),
    ("sideways", "q_init='sideways' must be one of uniform, l2r, r2l, perm:INDICES"),
    ("perm@{tmp}/two.txt", "has 2 lines; q starts from one order"),
    ("perm@{tmp}/none.txt", "cannot be read"),
])
def test_bad_named_q_init_is_a_one_line_config_error(tmp_path, q_init, message):
    (tmp_path / "two.txt").write_text("1,0,2-\n0-\n")
    with pytest.raises(ConfigError, match=message) as info:
        tiny_cfg(6, **{"objective.q_init": q_init.format(tmp=tmp_path)})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("over, message", [
    ({"objective.num_samples": 0}, "num_samples=0 must be >= 1"),
    ({"objective.eval_samples": 0}, "eval_samples=0 must be >= 1"),
    ({"objective.q_init": "random"}, "q_init='random' must be one of uniform, l2r, r2l"),
    ({"objective.q_lr_scale": 0}, "q_lr_scale=0.0 must be > 0"),
    ({"objective.q_entropy_start": -1}, "q_entropy_start=-1.0, objective.q_entropy_end=1.0, "
                                        "objective.q_entropy_steps=0 and objective.q_entropy_delay=0"),
    ({"objective.q_entropy_delay": -3}, "q_entropy_delay=-3 must be >= 0"),
    ({"objective.q_freeze_steps": -1}, "q_freeze_steps=-1 must be >= 0"),
    ({"objective.q_entropy_end": -0.5}, "q_entropy_end=-0.5, "),
    ({"objective.token_orders": "best"}, "token_orders='best' must be one of draws, mode"),
    ({"objective.token_orders": "mode", "objective.train_bound": "iw"},
     "token_orders=mode .* needs objective.train_bound=elbo"),
])
def test_bad_options_are_one_line_config_errors(over, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny_cfg(4, **over)
    assert "\n" not in str(info.value)


def test_q_lr_scale_scales_only_the_posteriors_updates():
    """One AdamW step with q_lr_scale=7 moves q's leaves exactly 7x as far as with 1, and the network
    and the order policy head exactly as far. Catches the factor applied as a gradient factor (Adam
    cancels it), to the wrong subtree (the policy head, the network) or not at all."""
    from jaxorder.training.optimizer import make_optimizer
    params = random_params(tiny_cfg(4, **{"objective.q_transitions": True}))  # q's table is q too
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) + 0.1 * p, params)
    steps = {}
    for scale in (1.0, 7.0):
        opt = make_optimizer(tiny_cfg(4, **{"objective.q_lr_scale": scale, "optimizer.warmup_steps": 0,
                                            "optimizer.grad_clip": 0}))
        steps[scale], _ = opt.update(grads, opt.init(params), params)
    for path, u1 in jax.tree_util.tree_flatten_with_path(steps[1.0])[0]:
        u7 = dict(jax.tree_util.tree_flatten_with_path(steps[7.0])[0])[path]
        keys = [k.key for k in path]
        factor = 7.0 if keys[0] == OWN_PARAMS and keys[1] in lo.Q_PARAMS else 1.0
        assert np.abs(np.asarray(u1)).max() > 0, keys
        np.testing.assert_allclose(np.asarray(u7), factor * np.asarray(u1), rtol=1e-6, err_msg=str(keys))
    assert set(lo.Q_PARAMS) - {"q_log_scale"} < set(params[OWN_PARAMS]) and "order_policy" not in lo.Q_PARAMS


def test_posterior_params_get_no_weight_decay():
    """With a zero gradient, one AdamW step leaves every leaf of q unchanged (a collapsed q has a zero
    score-function gradient; decay would shrink its table toward the uniform order with nothing to
    oppose it), while the network's matrices and the policy's transition table still shrink by
    lr * weight_decay. Catches q decayed, or decay switched off for everything."""
    from jaxorder.training.optimizer import make_optimizer
    cfg = tiny_cfg(4, **{"objective.q_transitions": True, "objective.policy_transitions": True,
                         "optimizer.warmup_steps": 0, "optimizer.grad_clip": 0,
                         "optimizer.weight_decay": 0.5})
    params = jax.tree.map(lambda p: p + 1.0, random_params(cfg))  # no zero leaf
    opt = make_optimizer(cfg)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    moved = {tuple(k.key for k in path): float(np.abs(np.asarray(u)).max())
             for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    for keys, size in moved.items():
        if keys[0] == OWN_PARAMS and keys[1] in lo.Q_PARAMS:
            assert size == 0.0, keys
    assert moved[(OWN_PARAMS, "policy_transition")] > 0
    assert sum(size > 0 for keys, size in moved.items() if keys[0] != OWN_PARAMS) >= 4


@pytest.mark.parametrize("token_orders", ["draws", "mode"])
def test_q_freeze_steps_stops_only_the_posteriors_gradient_until_the_step(token_orders):
    """Before step q_freeze_steps every leaf of q has a zero gradient and the network and the policy a
    nonzero one; from that step on q's gradient is back, equal to the unfrozen one, as is the loss value
    at every step. Catches a freeze that also stops the policy or the network, one that never ends (or
    ends a step late), and one that changes the loss."""
    over = {"objective.num_samples": 3, "objective.q_learn_scale": True, "objective.policy_transitions": True,
            "objective.q_entropy_end": 0.5, "objective.token_orders": token_orders,
            "objective.q_transitions": True}
    free, frozen = tiny_cfg(4, **over), tiny_cfg(4, **over, **{"objective.q_freeze_steps": 5})
    params = random_params(free)
    x = jnp.asarray([[0, 1, 1, 0], [1, 1, 0, 0]], jnp.int32)

    def grads(cfg, step):
        fn = jax.jit(jax.value_and_grad(lambda p: lo.loss(p, {"tokens": x, "step": jnp.asarray(step)},
                                                          jax.random.key(3), cfg)[0]))
        return fn(params)

    for step in (0, 4, 5, 9):
        (v_free, g_free), (v_frozen, g_frozen) = grads(free, step), grads(frozen, step)
        np.testing.assert_allclose(float(v_frozen), float(v_free), rtol=1e-6)
        for path, leaf in jax.tree_util.tree_flatten_with_path(g_frozen)[0]:
            keys = [k.key for k in path]
            want = dict(jax.tree_util.tree_flatten_with_path(g_free)[0])[path]
            in_q = keys[0] == OWN_PARAMS and keys[1] in lo.Q_PARAMS
            if in_q and step < 5:
                assert not np.any(np.asarray(leaf)), (step, keys)
            else:
                np.testing.assert_allclose(np.asarray(leaf), np.asarray(want), rtol=1e-5, atol=1e-7,
                                           err_msg=f"{step} {keys}")
        q_norm = sum(float(jnp.abs(g_free[OWN_PARAMS][k]).sum()) for k in lo.Q_PARAMS)
        assert q_norm > 0 and float(jnp.abs(g_frozen[OWN_PARAMS]["policy_transition"]).sum()) > 0


def test_target_embed_std_zero_starts_without_target_information():
    """model.target_embed_std=0: the target embedding starts at zero, so an untrained any-order network's
    logits do not depend on the targets (with model.query_positions=current); at the default 1 they do.
    Catches the option not reaching the initializer."""
    x = jnp.asarray([[0, 1, 1, 0]], jnp.int32)
    pos, t1, t2 = (jnp.asarray([[0, 0, 1, 2]]), jnp.asarray([[0, 1, 2, 3]]), jnp.asarray([[3, 2, 1, 0]]))
    diffs = {}
    for std in (0.0, 1.0):
        cfg = tiny_cfg(4, **{"model.target_embed_std": std, "model.query_positions": "current"})
        params = model.init_params(cfg.model, jax.random.key(0), 4, target_positions=True)
        out = [model.apply(params, cfg.model, x, pos, "causal", target_positions_BL=t) for t in (t1, t2)]
        diffs[std] = float(jnp.abs(out[0] - out[1]).max())
    assert diffs[0.0] == 0.0 and diffs[1.0] > 1e-3, diffs
    with pytest.raises(ConfigError, match="model.target_embed_std=-1.0 must be >= 0"):
        tiny_cfg(4, **{"model.target_embed_std": -1})


@pytest.mark.slow
def test_eval_orders_and_extras_on_a_tiny_trained_run(tmp_path, text_corpus):
    """`eval --orders perm:1,0,2-,l2r,r2l` and the yardstick's extras (the ELBO beside the IW bound,
    q's order statistics) on a 3-step learned_order run; the policy sampler decodes it."""
    run = tmp_path / "run"
    train_on_corpus(run, (*TINY, "objective.name=learned_order", "objective.eval_samples=4"), text_corpus)
    code, out, err = cli_in_process(["eval", run, "--orders", "perm:1,0,2-,l2r,r2l", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert set(result["orders"]) >= {"perm:1,0,2-", "l2r", "r2l"}
    assert all(np.isfinite(result["orders"][k]["bpb"]) for k in ("perm:1,0,2-", "l2r", "r2l"))
    ex = result["extras"]
    assert ex["elbo_nll"]["bpb"] >= result["bpb"] - 1e-6  # the ELBO is the looser bound (same draws)
    assert abs(ex["mode_l2r"]["mean"] + ex["mode_r2l"]["mean"] + ex["mode_other"]["mean"] - 1) < 1e-6
    assert len(ex["mean_rank"]["mean"]) == 32 and abs(np.mean(ex["mean_rank"]["mean"]) - 15.5) < 1e-4
    assert 0 <= ex["mode_5_before_0"]["mean"] <= 1
    code, out, err = cli_in_process(["eval", run])
    assert code == 0 and "elbo_nll:" in out and "mode_l2r:" in out, (out, err)


@pytest.mark.slow
def test_sharded_training_equals_one_device(tmp_path):
    """10 train steps on meshes 2x2x2 and 1x2x4 (8 forced host devices, a subprocess) equal one
    device within 1e-5: the own parameter subtree and the posterior draws shard like the network."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "losses.json"
    script = Path(__file__).parent / "scripts" / "mesh_equivalence.py"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, str(script), str(out), "learned_order:2x2x2,1x2x4"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(out.read_text())["learned_order"]
    for mesh in ("2x2x2", "1x2x4"):
        np.testing.assert_allclose(losses[mesh], losses["single"], atol=1e-5, rtol=0)
