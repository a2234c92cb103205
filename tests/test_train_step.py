"""The train step's randomness is a function of the state's step, so a resumed run redraws the same noise."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import config as config_lib
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step


def test_step_rng_is_folded_from_the_state_step():
    """mdm's loss depends on its rng (noise levels, masks): the same step number gives the same loss
    from the same state, another step number another loss. A step rng that ignores the step would
    give every step the same masks; one that is not a function of the step would break resume."""
    tiny = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.max_len=16", "data.seq_len=8"]
    cfg = config_lib.load(None, ["objective.name=mdm", *tiny, "data.batch_size=4"])
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, 256)
    step = jax.jit(make_train_step(cfg, optimizer))  # not donated: the same state is stepped four times

    def loss_at(step_number: int) -> float:
        _, metrics = step({**state, "step": jnp.asarray(step_number, jnp.int32)}, tokens)
        return float(metrics["loss"])

    assert loss_at(7) == loss_at(7) and loss_at(0) == loss_at(0)
    assert not np.isclose(loss_at(0), loss_at(7), rtol=1e-4)
