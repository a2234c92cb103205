"""latent_order's collapse controls: the posterior temperature beta, its schedule, the entropy bonus,
and the posterior metrics (against float64 references and hand computations on tiny cases)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.objectives import latent_order
from jaxorder.training.metrics import read_metrics
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step

VOCAB = 8  # 4 symbols + PAD, MASK, BOS, EOS
N = 6


def cfg_with(**over) -> config_lib.Config:
    ov = [f"model.vocab_size={VOCAB}", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
          "model.max_len=16", f"data.seq_len={N}", "data.batch_size=4", "objective.name=latent_order",
          "objective.num_orders=4", "train.steps=40"] + [f"{k}={v}" for k, v in over.items()]
    return config_lib.load(None, ov)


@pytest.fixture(scope="module")
def setup():
    cfg = cfg_with()
    params = jax.jit(model.init_params, static_argnums=(0, 2, 3))(cfg.model, jax.random.key(3), 4, True)
    x = jax.random.randint(jax.random.key(4), (4, N), 0, 4, jnp.int32)
    return cfg, params, x


def lme_np(a: np.ndarray, beta: float) -> np.ndarray:
    """Plain float64 reference: -(1/beta) log mean_k exp(beta l_k), beta = 0 the mean of -l."""
    a = np.asarray(a, np.float64)
    if beta == 0:
        return -a.mean(axis=1)
    y = beta * a
    m = y.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(y - m).mean(axis=1))) / beta


def jitted_loss(cfg):
    return jax.jit(lambda p, b, r: latent_order.loss(p, b, r, cfg))


def sampled_l(params, x, rng, cfg) -> np.ndarray:
    """l_k = log p(x | sigma_k) of the candidates the loss draws from `rng` (today's code path)."""
    return np.asarray(jax.jit(lambda p, t, r: latent_order._sampled(p, t, r, cfg)[1])(params, x, rng))


def test_tempered_nll_matches_float64_reference_and_is_non_increasing_in_beta():
    """Catches a missing 1/beta, beta applied outside the log, a dropped centring term."""
    l_BK = np.array([[-30.0, -35.0, -50.0, -31.0], [-3.0, -9.0, -4.0, -12.0], [-7.0, -7.0, -7.0, -7.0]])
    betas = [0.0, 1e-3, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]
    fn = jax.jit(latent_order.tempered_nll)
    values = []
    for beta in betas:
        got = np.asarray(fn(jnp.asarray(l_BK, jnp.float32), jnp.float32(beta)))
        np.testing.assert_allclose(got, lme_np(l_BK, beta), rtol=2e-6, atol=2e-5)
        values.append(got)
    values = np.array(values)  # [beta, B]: a power mean of p(x | sigma_k), so non-increasing in beta
    assert np.all(np.diff(values, axis=0) <= 1e-5), values
    assert np.all(values[0, :2] - values[-1, :2] > 1.0)  # strictly, where the orders disagree
    np.testing.assert_allclose(values[:, 2], 7.0, rtol=1e-6)  # equal orders: every beta agrees
    np.testing.assert_allclose(values[betas.index(1.0)], np.asarray(latent_order.mixture_nll(
        jnp.asarray(l_BK, jnp.float32))), rtol=1e-6)


def test_tempered_gradient_is_softmax_of_beta_l_and_finite_at_zero():
    """d/dl_k of the tempered NLL is -softmax_k(beta l); at beta = 0 exactly -1/K (a NaN here means
    the beta = 0 branch divides by zero under the where)."""
    l_BK = jnp.asarray([[-3.0, -9.0, -4.0, -12.0]])
    grad = jax.jit(jax.grad(lambda l_, b: latent_order.tempered_nll(l_, b).sum()))
    np.testing.assert_allclose(np.asarray(grad(l_BK, jnp.float32(0.0))), -0.25, rtol=1e-6)
    for beta in (0.5, 1.0):
        np.testing.assert_allclose(np.asarray(grad(l_BK, jnp.float32(beta))),
                                   -np.asarray(jax.nn.softmax(beta * l_BK, axis=1)), rtol=1e-5, atol=1e-7)


def test_loss_beta0_is_mean_of_logs_and_beta1_is_todays_loss(setup):
    """Through loss() on a tiny model: beta = 0 gives the mean-of-logs -(1/K) sum_k l_k / n by hand;
    the default (constant beta = 1) is today's K-order bound exactly; the tempered path at beta = 1
    (a linear schedule past its warmup) agrees with it; `nll_per_token` is the bound at any beta."""
    cfg, params, x = setup
    rng = jax.random.key(11)
    l_BK = sampled_l(params, x, rng, cfg)
    todays = float(np.mean(np.asarray(latent_order.mixture_nll(jnp.asarray(l_BK)))) / N)
    value, m = jitted_loss(cfg)(params, {"tokens": x}, rng)
    assert float(value) == pytest.approx(todays, rel=1e-6) and float(m["beta"]) == 1.0
    value0, m0 = jitted_loss(cfg_with(**{"objective.beta": 0.0}))(params, {"tokens": x}, rng)
    np.testing.assert_allclose(float(value0), -l_BK.astype(np.float64).mean() / N, rtol=1e-5)
    np.testing.assert_allclose(float(m0["nll_per_token"]), todays, rtol=1e-6)
    assert float(value0) > float(value) + 1e-3  # the untrained orders disagree: Jensen's gap is real
    lin = cfg_with(**{"objective.beta_schedule": "linear", "objective.beta_warmup_steps": 10})
    value1, m1 = jitted_loss(lin)(params, {"tokens": x, "step": jnp.int32(25)}, rng)
    np.testing.assert_allclose(float(value1), todays, rtol=1e-5)
    assert float(m1["beta"]) == 1.0
    half, _ = jitted_loss(lin)(params, {"tokens": x, "step": jnp.int32(5)}, rng)
    np.testing.assert_allclose(float(half), lme_np(l_BK, 0.5).mean() / N, rtol=1e-5)


@pytest.mark.parametrize("warmup,steps", [(40, 40), (0, 40), (12, 40)])
def test_linear_schedule_at_0_half_full_and_twice(warmup, steps):
    """beta_start at step 0, midway at N/2, beta at N and after; warmup 0 means train.steps."""
    cfg = cfg_with(**{"objective.beta_schedule": "linear", "objective.beta_start": 0.2, "objective.beta": 1.0,
                      "objective.beta_warmup_steps": warmup, "train.steps": steps})
    n = warmup or steps
    at = jax.jit(lambda s: latent_order.scheduled_beta(s, cfg))
    got = [float(at(jnp.int32(s))) for s in (0, n // 2, n, 2 * n)]
    np.testing.assert_allclose(got, [0.2, 0.2 + 0.8 * (n // 2) / n, 1.0, 1.0], rtol=1e-6)
    assert float(latent_order.scheduled_beta(None, cfg)) == 1.0  # no step (a bare loss call): final beta
    const = cfg_with(**{"objective.beta": 0.5})
    assert float(latent_order.scheduled_beta(jnp.int32(0), const)) == 0.5


def test_entropy_bonus_gradient_raises_the_posterior_entropy(setup):
    """One small gradient step on the bonus alone (loss with lambda minus loss without) raises H(w)
    computed from the same candidates; with the sign flipped or w stop-gradiented it would not."""
    cfg, params, x = setup
    rng = jax.random.key(5)
    bonus = cfg_with(**{"objective.order_entropy_bonus": 0.5})
    plain_loss, bonus_loss = jitted_loss(cfg), jitted_loss(bonus)

    def entropy(p):
        return float(np.mean(np.asarray(latent_order.order_entropy(jnp.asarray(sampled_l(p, x, rng, cfg))))))

    batch = {"tokens": x}
    grad = jax.jit(jax.grad(lambda p: bonus_loss(p, batch, rng)[0] - plain_loss(p, batch, rng)[0]))
    g = grad(params)
    h0 = entropy(params)
    h1 = entropy(jax.tree.map(lambda w, d: w - 0.05 * d, params, g))
    assert h1 > h0 + 1e-4, (h0, h1)
    value, m = bonus_loss(params, {"tokens": x}, rng)
    value_plain, _ = plain_loss(params, {"tokens": x}, rng)
    np.testing.assert_allclose(float(value), float(value_plain) - 0.5 * float(m["order_entropy"]), rtol=1e-5)


@pytest.mark.parametrize("fixed", [True, False])
def test_logged_weights_sum_to_one_and_eff_orders_in_1_k(setup, fixed):
    """w_l2r + w_r2l + (K-2) w_random = 1 (K w_random without fixed orders); eff_orders is the batch
    mean of exp(H(softmax l)) from the same candidates, in [1, K]."""
    cfg0, params, x = setup
    cfg = cfg_with(**{"objective.include_fixed_orders": fixed})
    rng = jax.random.key(7)
    _, m = jitted_loss(cfg)(params, {"tokens": x}, rng)
    K = cfg.objective.num_orders
    fixed_w = float(m["w_l2r"] + m["w_r2l"]) if fixed else 0.0
    total = fixed_w + (K - 2 * fixed) * float(m["w_random"])
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    l_BK = sampled_l(params, x, rng, cfg).astype(np.float64)
    w_BK = np.exp(l_BK - l_BK.max(1, keepdims=True))
    w_BK /= w_BK.sum(1, keepdims=True)
    eff = np.exp(-(w_BK * np.log(np.maximum(w_BK, 1e-300))).sum(1)).mean()
    np.testing.assert_allclose(float(m["eff_orders"]), eff, rtol=1e-4)
    assert 1.0 <= float(m["eff_orders"]) <= K
    # the two ends: one order takes everything (1), all equal (K)
    ends = jnp.asarray([[0.0, -200.0, -200.0, -200.0], [-5.0, -5.0, -5.0, -5.0]])
    np.testing.assert_allclose(np.exp(np.asarray(latent_order.order_entropy(ends))), [1.0, 4.0], rtol=1e-5)


@pytest.mark.parametrize("accum", [1, 2])
def test_train_step_feeds_the_step_to_the_schedule(accum):
    """The train step passes its step counter: beta = 0, 1/4, 1/2, 3/4, 1, 1 on steps 0..5 of a
    4-step warmup (with and without gradient accumulation); the loss stays finite."""
    cfg = cfg_with(**{"objective.beta_schedule": "linear", "objective.beta_warmup_steps": 4,
                      "train.grad_accum_steps": accum})
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    step = jax.jit(make_train_step(cfg, optimizer))
    tokens = jnp.tile(jnp.arange(N, dtype=jnp.int32) % 4, (4, 1))
    betas = []
    for _ in range(6):
        state, metrics = step(state, tokens)
        betas.append(float(metrics["beta"]))
        assert np.isfinite(float(metrics["loss"])) and bool(metrics["finite"])
    np.testing.assert_allclose(betas, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("override,message", [
    ("objective.beta_schedule=cosine", "beta_schedule='cosine' must be constant or linear"),
    ("objective.beta=-0.5", "objective.beta=-0.5 must be >= 0"),
    ("objective.beta_start=nan", "objective.beta_start must be a finite number, got 'nan'"),
    ("objective.order_entropy_bonus=-1", "order_entropy_bonus=-1.0 must be >= 0"),
])
def test_bad_collapse_options_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg_with(**dict([override.split("=")]))


def test_posterior_metrics_land_in_metrics_jsonl(tmp_path, text_corpus):
    """A tiny latent_order run with a warmup schedule: train records carry beta (rising), eff_orders
    in [1, K] and the weights per kind."""
    from jaxorder.training.loop import train

    from conftest import tiny_config_yaml

    path = tmp_path / "c.yaml"
    path.write_text(tiny_config_yaml(text_corpus, steps=4, checkpoint_every=4, eval_every=4,
                                     objective="latent_order"))
    cfg = config_lib.load(path, ["train.log_every=2", "data.seq_len=16", "model.d_model=16",
                                 "model.n_layers=1", "objective.beta_schedule=linear",
                                 "logging.tensorboard=false"])
    train(cfg, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert [r["step"] for r in records] == [2, 4]
    # step s reports the beta of its update, made after s - 1 updates: (s - 1) / train.steps
    np.testing.assert_allclose([r["beta"] for r in records], [0.25, 0.75], rtol=1e-6)
    for r in records:
        assert 1.0 <= r["eff_orders"] <= 4.0
        assert abs(r["w_l2r"] + r["w_r2l"] + 2 * r["w_random"] - 1.0) < 1e-4
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "step 4/4 loss" in log and " beta 0.75 eff_orders " in log  # the log line shows them too
