"""The `Mutation` record and the test files mutations name (`PREFIX + "test_name"`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    """One bug: `original` (exactly once in `path`) becomes `replacement`; `tests` must fail on it."""

    id: str
    path: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]



OBJ = "tests/test_objectives.py::"
ORD = "tests/test_order_objectives.py::"
BD3 = "tests/test_bd3.py::"
PINS = "tests/test_yardstick_pins.py::"
SAMPLE_MDM = "tests/test_sampling_mdm.py::"
FAST = "tests/test_sampling_mdm_fast.py::"
PROPHET = "tests/test_sampling_prophet.py::"
SPEC = "tests/test_sampling_ar_speculative.py::"
ASSD = "tests/test_sampling_any_order_speculative.py::"
REMASK = "tests/test_sampling_remask.py::"
GUIDED = "tests/test_sampling_guided.py::"
LEARNED = "tests/test_sampling_learned.py::"
FILTER = "tests/test_commit_filter.py::"
IG = "tests/test_sampling_info_gain.py::"
UNCERTAINTY = "tests/test_sampling_uncertainty.py::"
TPU_REC = "tests/test_tpu_recovery.py::"
SLURM = "tests/test_distributed_slurm.py::"
OBSERVE = "tests/test_observe.py::"
GCS = "tests/test_gcs.py::"
PAIRED = "tests/test_paired_se.py::"
PAIRWISE = "tests/test_pairwise_order.py::"
QP = "tests/test_query_positions.py::"
MIX = "tests/test_order_mixtures.py::"
SCALING = "tests/test_scaling.py::"
COLLAPSE = "tests/test_latent_collapse.py::"
POS = "tests/test_positions.py::"
PRE = "tests/test_preemption_unit.py::"
PRE2 = "tests/test_preemption.py::"
ILM = "tests/test_ilm.py::"
SCORE = "tests/test_scoring.py::"
PERM = "tests/test_perm_orders.py::"
GIVEN = "tests/test_sampling_given_order.py::"
CANDS = "tests/test_latent_candidate_orders.py::"
RESTARTS = "tests/test_restarts.py::"
RERANK = "tests/test_rerank.py::"
LO = "tests/test_learned_order.py::"
LO_SAMPLING = "tests/test_learned_order_sampling.py::"
