"""Prophet's early commit (`--prophet G`, jaxorder/sampling/mdm_steps.py) on its own: the gap
thresholds by thirds of the budget, and the gap itself on hand-made log-probs. Its behaviour inside
the samplers (an infinite gap is the base rule; a tiny one fills each block at its first pass's
argmax) is tested in test_sampling_mdm_fast.py."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxorder.sampling.mdm_steps import initial_state, prophet_commit, prophet_threshold


def test_prophet_thresholds_follow_the_thirds_of_the_budget():
    got = [float(prophet_threshold(5.0, j, 9)) for j in range(9)]
    assert got == [7.5] * 3 + [5.0] * 3 + [2.5] * 3


def test_prophet_gap_is_the_mean_top2_gap_of_the_blocks_masked_positions():
    """Row 0's masked block positions have top-2 gaps 1 and 3 (mean 2), row 1's 0 (a tied top) and 1
    (mean 0.5); a committed position and one outside the block have large gaps that must not count.
    At threshold 1 only row 0 commits, at its argmax (the first of a tie), adding the top log-probs."""
    M = 9
    x = jnp.asarray([[M, M, 4, M], [M, M, 7, M]], jnp.int32)
    st = dict(initial_state(x, M, 2), step=jnp.ones((), jnp.int32))
    logp = np.full((2, 4, 5), -20.0, np.float32)
    for row, pos, top, second, tok in [(0, 0, -0.5, -1.5, 2), (0, 1, -0.1, -3.1, 0), (0, 2, -0.1, -9, 1),
                                       (0, 3, -0.1, -9, 1), (1, 0, -0.7, -0.7, 3), (1, 1, -0.2, -1.2, 4),
                                       (1, 2, -0.1, -9, 1), (1, 3, -0.1, -9, 1)]:
        logp[row, pos, tok] = top
        logp[row, pos, (tok + 1) % 5] = second
    in_block = jnp.asarray([True, True, True, False])
    out = prophet_commit(st, jnp.asarray(logp), 0, in_block, 1.0)
    assert np.asarray(out["x"]).tolist() == [[2, 0, 4, M], [M, M, 7, M]]
    assert np.asarray(out["early"]).tolist() == [2, 0]
    np.testing.assert_allclose(np.asarray(out["logprob"]), [-0.6, 0.0], atol=1e-6)
    assert np.asarray(prophet_commit(st, jnp.asarray(logp), 0, in_block, 2.1)["early"]).tolist() == [0, 0]
    tie = prophet_commit(st, jnp.asarray(logp), 0, in_block, 0.4)
    assert np.asarray(tie["x"])[1].tolist() == [3, 4, 7, M] and np.asarray(tie["early"]).tolist() == [2, 2]
