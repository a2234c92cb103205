"""The mutations of `make mutate` (tools/mutate.py): small plausible bugs and the tests that kill them.

Extend this list with every new objective and sampler (and every new estimator the yardstick
reports): add at least one realistic one-token bug of its core computation, with the few targeted
tests that must fail on it. A mutation's `original` must occur exactly once in its file; when the
code moves, `make mutate` reports it NOT APPLIED, and the snippet is updated here.
"""
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
PINS = "tests/test_yardstick_pins.py::"
SAMPLE_MDM = "tests/test_sampling_mdm.py::"
FAST = "tests/test_sampling_mdm_fast.py::"
SPEC = "tests/test_sampling_ar_speculative.py::"
ASSD = "tests/test_sampling_any_order_speculative.py::"
REMASK = "tests/test_sampling_remask.py::"
GUIDED = "tests/test_sampling_guided.py::"
LEARNED = "tests/test_sampling_learned.py::"
FILTER = "tests/test_commit_filter.py::"
IG = "tests/test_sampling_info_gain.py::"
TPU_REC = "tests/test_tpu_recovery.py::"
SLURM = "tests/test_distributed_slurm.py::"
OBSERVE = "tests/test_observe.py::"
GCS = "tests/test_gcs.py::"
PAIRED = "tests/test_paired_se.py::"
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
RERANK = "tests/test_rerank.py::"
LO = "tests/test_learned_order.py::"
LO_SAMPLING = "tests/test_learned_order_sampling.py::"

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ objectives
    Mutation(
        "l2r-no-bos", "jaxorder/objectives/l2r.py",
        "inputs_BL = jnp.concatenate([jnp.full_like(tokens_BL[:, :1], bos), tokens_BL[:, :-1]], axis=1)",
        "inputs_BL = tokens_BL",
        "l2r input not shifted (no BOS prepended): slot i sees its own target",
        (OBJ + "test_l2r_loss_equals_hand_computed_cross_entropy",)),
    Mutation(
        "l2r-target-shift", "jaxorder/objectives/l2r.py",
        "return token_nll(logits_BLV, tokens_BL)",
        "return token_nll(logits_BLV[:, :-1], tokens_BL[:, 1:])",
        "l2r targets off by one (slot i scored against x_{i+1}; x_0 never scored)",
        (OBJ + "test_l2r_loss_equals_hand_computed_cross_entropy",)),
    Mutation(
        "r2l-no-flip", "jaxorder/objectives/r2l.py",
        'return {**batch, "tokens": jnp.flip(batch["tokens"], axis=1)}',
        'return {**batch, "tokens": batch["tokens"]}',
        "r2l does not reverse the window (it trains l2r)",
        (OBJ + "test_r2l_equals_l2r_on_reversed_sequence",)),
    Mutation(
        "mdm-no-weight", "jaxorder/objectives/mdm.py",
        "return nll_BL.sum(axis=1) / t_B, t_B",
        "return nll_BL.sum(axis=1), t_B",
        "mdm ELBO without the 1/t weight",
        (OBJ + "test_mdm_loss_monte_carlo_matches_exact_time_average",)),
    Mutation(
        "mdm-weight-t", "jaxorder/objectives/mdm.py",
        "return nll_BL.sum(axis=1) / t_B, t_B",
        "return nll_BL.sum(axis=1) * t_B, t_B",
        "mdm ELBO weighted by t instead of 1/t",
        (OBJ + "test_mdm_loss_monte_carlo_matches_exact_time_average",)),
    Mutation(
        "mdm-weight-smoothed", "jaxorder/objectives/mdm.py",
        "return nll_BL.sum(axis=1) / t_B, t_B",
        "return nll_BL.sum(axis=1) / (t_B + 0.01), t_B",
        "mdm ELBO weight 1/(t + 0.01): a lower-variance but biased yardstick (below the order average)",
        ("tests/test_mdm_order_identity.py::test_mean_over_random_orders_equals_the_elbo_on_a_trained_model",)),
    Mutation(
        "mdm-no-subs", "jaxorder/objectives/mdm.py",
        "logits_BLV = logits_BLV.at[..., special_ids(cfg.model).mask].set(-jnp.inf)",
        "logits_BLV = logits_BLV",
        "SUBS: the MASK logit is not set to -inf (MASK gets probability mass)",
        (OBJ + "test_mdm_never_predicts_mask_and_scores_only_masked_positions",)),
    Mutation(
        "bd3-corrupt-tile", "jaxorder/objectives/bd3.py",
        "t_BL = jnp.repeat(t_BK, block_size, axis=1)",
        "t_BL = jnp.tile(t_BK, (1, block_size))",
        "bd3 corruption: block times tiled instead of repeated (token i gets block i mod K's t)",
        (ORD + "test_bd3_corrupt_and_elbo_use_each_tokens_own_block_time",)),
    Mutation(
        "bd3-elbo-tile", "jaxorder/objectives/bd3.py",
        "(nll_BL / jnp.repeat(t_BK, block_size, axis=1))",
        "(nll_BL / jnp.tile(t_BK, (1, block_size)))",
        "bd3 ELBO: the 1/t_k weights tiled instead of repeated over each block's tokens",
        (ORD + "test_bd3_corrupt_and_elbo_use_each_tokens_own_block_time",)),
    Mutation(
        "bd3-elbo-sqrt-weight", "jaxorder/objectives/bd3.py",
        "(nll_BL / jnp.repeat(t_BK, block_size, axis=1))",
        "(nll_BL / jnp.sqrt(jnp.repeat(t_BK, block_size, axis=1)))",
        "bd3 ELBO weighted by 1/sqrt(t): b = 1 no longer averages to the l2r NLL",
        (ORD + "test_bd3_b1_and_l2r_losses_are_the_same_function_of_the_prefix_conditionals",)),
    Mutation(
        "l2r-no-bos-shift", "jaxorder/objectives/l2r.py",
        "inputs_BL = jnp.concatenate([jnp.full_like(tokens_BL[:, :1], bos), tokens_BL[:, :-1]], axis=1)",
        "inputs_BL = jnp.concatenate([tokens_BL[:, :1], tokens_BL[:, :-1]], axis=1)",
        "l2r input starts with x_0 instead of BOS: the first target is visible to its own slot",
        (ORD + "test_bd3_b1_and_l2r_losses_are_the_same_function_of_the_prefix_conditionals",)),
    Mutation(
        "bd3-mask-kind", "jaxorder/objectives/bd3.py",
        "positions_B2L, mask_kind(block_size))",
        'positions_B2L, "bidirectional")',
        "bd3 training pass over [x_t ; x] with a bidirectional mask (the noisy half sees the answer)",
        (ORD + "test_bd3_noisy_block_sees_no_answer_and_no_future",)),
    Mutation(
        "ao-ar-target-shift", "jaxorder/objectives/ao_ar.py",
        "target_positions_BL=order_BL)",
        "target_positions_BL=positions_BL)",
        "ao_ar target positions shifted by one slot (the current position instead of sigma_j)",
        (ORD + "test_ao_ar_one_pass_nll_equals_brute_force_chain_rule",)),
    Mutation(
        "latent-no-log-k", "jaxorder/objectives/latent_order.py",
        "return jnp.log(l_BK.shape[1]) - jax.nn.logsumexp(l_BK, axis=1)",
        "return -jax.nn.logsumexp(l_BK, axis=1)",
        "latent_order log-mean-exp without the log K (a log-sum-exp)",
        (ORD + "test_latent_order_bound_over_all_orders_is_log_mean_exp",)),
    Mutation(
        "latent-beta-outside-log", "jaxorder/objectives/latent_order.py",
        "-m_B - lme_B / safe_beta",
        "-m_B - lme_B * safe_beta",
        "tempered latent_order loss with the temperature multiplied outside the log instead of 1/beta",
        (COLLAPSE + "test_tempered_nll_matches_float64_reference_and_is_non_increasing_in_beta",)),
    Mutation(
        "latent-beta-schedule-cap", "jaxorder/objectives/latent_order.py",
        "/ warmup, 1.0)",
        "/ warmup, 2.0)",
        "linear beta schedule that keeps rising past its warmup (to twice the target beta)",
        (COLLAPSE + "test_linear_schedule_at_0_half_full_and_twice",)),
    Mutation(
        "latent-beta-zero-division", "jaxorder/objectives/latent_order.py",
        "jnp.where(positive, beta, 1.0)",
        "jnp.where(positive, beta, 0.0)",
        "beta = 0 branch guarded by where only: 0/0 in the unused branch makes the gradient NaN",
        (COLLAPSE + "test_tempered_gradient_is_softmax_of_beta_l_and_finite_at_zero",)),
    Mutation(
        "latent-entropy-bonus-sign", "jaxorder/objectives/latent_order.py",
        "value = value - o.order_entropy_bonus",
        "value = value + o.order_entropy_bonus",
        "entropy bonus with the wrong sign: it lowers the posterior entropy (speeds up the collapse)",
        (COLLAPSE + "test_entropy_bonus_gradient_raises_the_posterior_entropy",)),
    # ------------------------------------------------------------------ learned_order
    Mutation(
        "lo-policy-no-open-mask", "jaxorder/objectives/learned_order.py",
        "jnp.where(open_NLL, logits_NLP, -jnp.inf)",
        "jnp.where(True, logits_NLP, -jnp.inf)",
        "order policy not masked to the open positions (it may pick a generated position again)",
        (LO + "test_policy_is_a_distribution_over_orders_and_the_joint_over_everything",)),
    Mutation(
        "lo-baseline-includes-self", "jaxorder/objectives/learned_order.py",
        "return (w_BK.sum(axis=1, keepdims=True) - w_BK) / (K - 1)",
        "return (w_BK.sum(axis=1, keepdims=True) - 0 * w_BK) / K",
        "score-function baseline that includes w_k itself (q's gradient scaled by (K-1)/K: biased)",
        (LO + "test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient",)),
    Mutation(
        "lo-score-sign", "jaxorder/objectives/learned_order.py",
        "(lp_BK + (w_BK - loo_baseline(w_BK)) * lq_BK)",
        "(lp_BK - (w_BK - loo_baseline(w_BK)) * lq_BK)",
        "wrong sign of the score-function term (q climbs away from the posterior)",
        (LO + "test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient",)),
    Mutation(
        "lo-pl-forward-normalizer", "jaxorder/objectives/learned_order.py",
        "jax.lax.cumlogsumexp(s_BKL, axis=2, reverse=True)",
        "jax.lax.cumlogsumexp(s_BKL, axis=2, reverse=False)",
        "Plackett-Luce normalized over the chosen instead of the remaining positions",
        (LO + "test_plackett_luce_sums_to_one_and_gumbel_top_n_samples_it",)),
    Mutation(
        "lo-iw-no-log-k", "jaxorder/objectives/learned_order.py",
        "return jnp.log(w_BK.shape[1]) - jax.nn.logsumexp(w_BK, axis=1)",
        "return -jax.nn.logsumexp(w_BK, axis=1)",
        "importance-weighted bound as a log-sum-exp (off by log K: below -log p(x))",
        (LO + "test_log_px_above_iw_bounds_above_elbo_and_the_yardstick_estimates_them",)),
    Mutation(
        "lo-extras-token-with-policy", "jaxorder/objectives/learned_order.py",
        'token_BK = d["lp"] - d["policy"]', 'token_BK = d["lp"] + 0 * d["policy"]',
        "eval extra token_nll that still contains the policy term (the ELBO's split double-counts it)",
        (LO + "test_log_px_above_iw_bounds_above_elbo_and_the_yardstick_estimates_them",)),
    Mutation(
        "lo-q-lr-scale-prefix", "jaxorder/training/optimizer.py",
        "keys[0] == OWN_PARAMS else 1.0", "keys[0] != OWN_PARAMS else 1.0",
        "q_lr_scale applied outside the objective's own subtree instead of to q's leaves",
        (LO_SAMPLING + "test_q_lr_scale_scales_only_the_posteriors_updates",)),
    Mutation(
        "lo-entropy-weight-dropped", "jaxorder/objectives/learned_order.py",
        "w_BK = jax.lax.stop_gradient(lp_BK - beta * lq_BK)", "w_BK = jax.lax.stop_gradient(lp_BK - lq_BK)",
        "q_entropy_start ignored by q's score-function weights (no annealing of the entropy term)",
        (LO + "test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient",)),
    Mutation(
        "lo-iw-direct-unweighted", "jaxorder/objectives/learned_order.py",
        "return (normalized_BK * w_BK + (bound_B[:, None] - bound_minus_BK) * lq_BK).sum(axis=1)",
        "return (w_BK / K + (bound_B[:, None] - bound_minus_BK) * lq_BK).sum(axis=1)",
        "VIMCO direct term with uniform instead of normalized importance weights (the ELBO's p gradient)",
        (LO + "test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient[iw-0.6-True]",)),
    Mutation(
        "lo-iw-baseline-keeps-own", "jaxorder/objectives/learned_order.py",
        "bound_minus_BK = jax.nn.logsumexp(w_minus_BKK, axis=2) - jnp.log(K)",
        "bound_minus_BK = 0.5 * (jax.nn.logsumexp(w_minus_BKK, axis=2) - jnp.log(K) + bound_B[:, None])",
        "VIMCO baseline that half depends on the draw's own weight (biased q gradient)",
        (LO + "test_score_function_surrogate_is_unbiased_for_the_exact_elbo_gradient[iw-0.6-True]",)),
    Mutation(
        "lo-scale-gate-open", "jaxorder/objectives/learned_order.py",
        '("q_log_scale",), beta < 1)', '("q_log_scale",), beta <= 1)',
        "q's inverse temperature also learns at beta = 1 (where it spreads q)",
        (LO + "test_learned_scale_multiplies_every_score_and_starts_at_one",)),
    Mutation(
        "lo-transition-sees-current", "jaxorder/objectives/learned_order.py",
        "return jnp.concatenate([jnp.full_like(order_NL[:, :1], max_len), order_NL[:, :-1]], axis=1)",
        "return order_NL",
        "policy transition table indexed by the position being chosen (pi sees sigma_j)",
        (LO + "test_policy_is_a_distribution_over_orders_and_the_joint_over_everything[True]",)),
    Mutation(
        "lo-sampler-transition-no-start-row", "jaxorder/sampling/learned_order.py",
        "previous_B = jnp.where(c == 0, cfg.model.max_len, pos_B)",
        "previous_B = pos_B",
        "sampler reads the table's row of position 0 at the first slot instead of the start row",
        (LO_SAMPLING + "test_policy_sampler_draws_the_joint_exactly[True]",)),
    Mutation(
        "lo-learned-scale-added", "jaxorder/objectives/learned_order.py",
        'return s_BL * jnp.exp(own["q_log_scale"]) if "q_log_scale" in own else s_BL',
        'return s_BL + own["q_log_scale"] if "q_log_scale" in own else s_BL',
        "q's learned scale added to the scores instead of multiplying them (a no-op under softmax)",
        (LO + "test_learned_scale_multiplies_every_score_and_starts_at_one",)),
    Mutation(
        "target-embed-std-ignored", "jaxorder/model/transformer.py",
        '_init(cfg.target_embed_std, (None, "embed"))', '_init(1.0, (None, "embed"))',
        "model.target_embed_std not passed to the target embedding's initializer",
        (LO_SAMPLING + "test_target_embed_std_zero_starts_without_target_information",)),
    Mutation(
        "lo-sampler-reference-slot", "jaxorder/sampling/learned_order.py",
        "jax.lax.dynamic_index_in_dim(hidden_BLd, c, axis=1, keepdims=False)",
        "jax.lax.dynamic_index_in_dim(hidden_BLd, c + 1, axis=1, keepdims=False)",
        "uncached policy stream reads the next slot's state (it sees the token it is choosing for)",
        (LO_SAMPLING + "test_cached_sampler_equals_the_uncached_reference",)),
    Mutation(
        "lo-sampler-policy-temperature", "jaxorder/sampling/learned_order.py",
        "jax.random.categorical(jax.random.fold_in(order_key, c), logp_BL, axis=-1)",
        "jax.random.categorical(jax.random.fold_in(order_key, c), 2 * logp_BL, axis=-1)",
        "policy sampled at temperature 1/2 (not ancestral sampling of p(x, sigma))",
        (LO_SAMPLING + "test_policy_sampler_draws_the_joint_exactly",)),
    Mutation(
        "lo-mode-token-from-draws", "jaxorder/objectives/learned_order.py",
        "neg_s = -(token_mode_B + (policy_BK",
        "neg_s = -(token_BK.mean(axis=1) + (policy_BK",
        "token_orders=mode: the token term taken from the (gradient-stopped) draws, not the mode",
        (LO + "test_mode_training_fits_the_token_head_to_q_mode_and_the_rest_to_the_elbo",)),
    Mutation(
        "lo-mode-policy-not-in-weights", "jaxorder/objectives/learned_order.py",
        "w_BK = sg(token_BK + policy_BK - beta * lq_BK)",
        "w_BK = sg(token_BK - beta * lq_BK)",
        "token_orders=mode: q's weights leave out the policy term (q may encode x in its order)",
        (LO + "test_mode_training_fits_the_token_head_to_q_mode_and_the_rest_to_the_elbo",)),
    Mutation(
        "lo-mode-least-likely", "jaxorder/objectives/learned_order.py",
        "mode_BL = jnp.argsort(-sg(s_BL), axis=1)",
        "mode_BL = jnp.argsort(sg(s_BL), axis=1)",
        "token_orders=mode: the token head learns q's least likely order",
        (LO + "test_mode_training_fits_the_token_head_to_q_mode_and_the_rest_to_the_elbo",)),
    Mutation(
        "lo-freeze-ends-late", "jaxorder/objectives/learned_order.py",
        "Q_PARAMS, jnp.asarray(step) >= freeze_steps)",
        "Q_PARAMS, jnp.asarray(step) > freeze_steps)",
        "q_freeze_steps keeps q frozen one step longer than asked",
        (LO_SAMPLING + "test_q_freeze_steps_stops_only_the_posteriors_gradient_until_the_step",)),
    Mutation(
        "lo-freeze-stops-the-policy", "jaxorder/objectives/learned_order.py",
        "return gradient_only_where(params, Q_PARAMS, ",
        "return gradient_only_where(params, (*Q_PARAMS, 'policy_transition'), ",
        "q_freeze_steps also freezes the policy's transition table, which must learn q's initial draws",
        (LO_SAMPLING + "test_q_freeze_steps_stops_only_the_posteriors_gradient_until_the_step",)),
    Mutation(
        "ar-givens-not-forced", "jaxorder/sampling/ar.py",
        "forced_B = (s < known_B) | given_B", "forced_B = s < known_B",
        "ar sampler: a template's givens are generated over instead of teacher-forced",
        ("tests/test_sampling_ar.py::test_template_givens_are_kept_and_teacher_forced",)),
    Mutation(
        "filled-neighbours-after-step", "jaxorder/evaluation/commit_order.py",
        "filled_L = committed_at_L < step  # fixed", "filled_L = committed_at_L <= step  # fixed",
        "constrained-first statistic counts the step's own commits as already filled",
        ("tests/test_commit_order.py::test_filled_neighbours_hand_counted",
         "tests/test_commit_order.py::test_filled_peers_on_sudoku_random_zero_and_most_constrained_positive")),
    # ------------------------------------------------------------------ yardstick and order scoring
    Mutation(
        "yardstick-bytes-per-token", "jaxorder/evaluation/yardstick.py",
        "to_bpb = 1.0 / (LN2 * bytes_per_token)",
        "to_bpb = 1.0 / LN2",
        "bits/byte without the bytes-per-token factor (bits per token)",
        (PINS + "test_evaluate_bpb_and_stderr_equal_hand_computation[l2r]",)),
    Mutation(
        "yardstick-stderr-nats", "jaxorder/evaluation/yardstick.py",
        '"bpb_stderr": stderr * to_bpb,',
        '"bpb_stderr": stderr,',
        "the standard error left in nats per token (not converted to bits/byte)",
        (PINS + "test_evaluate_bpb_and_stderr_equal_hand_computation[l2r]",)),
    Mutation(
        "random-k-is-l2r", "jaxorder/evaluation/fixed_orders.py",
        "return np.asarray(jax.vmap(lambda k: jax.random.permutation(k, length))(keys))",
        "return np.tile(np.arange(length), (spec.count * batch, 1))",
        "random:K order scoring uses K copies of the l2r order",
        (PINS + "test_random_order_matrix_gives_each_window_k_distinct_permutations",)),
    # ------------------------------------------------------------------ model: RoPE and masks
    Mutation(
        "rope-sin-sign", "jaxorder/model/rope.py",
        "[x1 * cos_BL1F - x2 * sin_BL1F, x2 * cos_BL1F + x1 * sin_BL1F]",
        "[x1 * cos_BL1F + x2 * sin_BL1F, x2 * cos_BL1F - x1 * sin_BL1F]",
        "RoPE rotates by -angle (sin sign flipped)",
        ("tests/test_model.py::test_rope_matches_complex_rotation_and_is_relative",)),
    Mutation(
        "rope-halves-swapped", "jaxorder/model/rope.py",
        "x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)",
        "x2, x1 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)",
        "RoPE with the two halves of the head dim swapped",
        ("tests/test_model.py::test_rope_matches_complex_rotation_and_is_relative",)),
    Mutation(
        "causal-mask-strict", "jaxorder/model/attention.py",
        "return jnp.tril(jnp.ones((length, length), dtype=bool))",
        "return jnp.tril(jnp.ones((length, length), dtype=bool), k=-1)",
        "causal mask strictly lower (a slot cannot see itself; slot 0 sees nothing)",
        ("tests/test_model.py::test_causal_vs_bidirectional_masks",)),
    Mutation(
        "bd3-mask-noisy-clean", "jaxorder/model/attention.py",
        "(~q_clean & k_clean & (kb < qb))",
        "(~q_clean & k_clean & (kb <= qb))",
        "bd3 four-part mask: noisy -> clean also sees its own block (the answer)",
        (ORD + "test_bd3_mask_equals_four_part_definition",)),
    # ------------------------------------------------------------------ KV caches
    Mutation(
        "decode-mask-off-by-one", "jaxorder/model/attention.py",
        "((slot_T >= index) & (slot_T <= new_L1))",
        "((slot_T >= index) & (slot_T < new_L1))",
        "causal decode mask: a new slot does not see itself",
        ("tests/test_decode.py::test_decode_masks",)),
    Mutation(
        "cache-index-stuck", "jaxorder/model/attention.py",
        "cache_index.value = idx + L",
        "cache_index.value = idx",
        "KV cache index not advanced after a decode call",
        ("tests/test_sampling_ar.py::test_decode_step_matches_full_forward_in_chunks",)),
    # ------------------------------------------------------------------ samplers
    Mutation(
        "mdm-k-floor", "jaxorder/sampling/mdm_steps.py",
        "(eligible_BL.sum(axis=1) + steps_left - 1) // steps_left",
        "eligible_BL.sum(axis=1) // steps_left",
        "k-best samplers commit floor(masked left / steps left) instead of the ceiling",
        (SAMPLE_MDM + "test_tokens_per_step_is_the_ceiling",)),
    Mutation(
        "ancestral-reveal-off-by-one", "jaxorder/sampling/mdm_steps.py",
        "eligible_BL & (u_BL * steps_left < 1.0)",
        "eligible_BL & (u_BL * (steps_left + 1) < 1.0)",
        "ancestral reveal probability 1/(steps left + 1): the last step leaves masks",
        (SAMPLE_MDM + "test_infilling_keeps_template_fills_every_mask_and_respects_seeds[ancestral]",)),
    Mutation(
        "any-order-greedy-argmin", "jaxorder/sampling/any_order.py",
        "jnp.argmax(conf_BL, axis=1)",
        "jnp.argmin(conf_BL, axis=1)",
        "any-order greedy picks the least confident position",
        ("tests/test_sampling_any_order.py::test_greedy_takes_the_most_confident_position",)),
    Mutation(
        "assd-inverted-acceptance", "jaxorder/sampling/any_order_speculative.py",
        "accept_BK = (u_BK * q_d_BK < p_d_BK) & has_draft_K",
        "accept_BK = (u_BK * p_d_BK < q_d_BK) & has_draft_K",
        "speculative decoding accepts a draft with probability min(1, q/p) instead of min(1, p/q)",
        (ASSD + "test_samples_follow_the_chain_rule_exactly[K2-T1]",)),
    Mutation(
        "assd-residual-is-p", "jaxorder/sampling/any_order_speculative.py",
        "residual_BKV = jnp.maximum(pn_BKV - qn_BKV, 0.0)",
        "residual_BKV = jnp.maximum(pn_BKV, 0.0)",
        "speculative decoding redraws a rejected slot from p instead of the residual max(0, p - q)",
        (ASSD + "test_samples_follow_the_chain_rule_exactly[K2-T1]",)),
    Mutation(
        "assd-rejected-slots-stay", "jaxorder/sampling/any_order_speculative.py",
        'st["cache"] = jax.vmap(with_cache_index)(cache, st["c"])',
        'st["cache"] = cache',
        "speculative decoding keeps every verify slot in the cache, rejected drafts included",
        (ASSD + "test_temperature_zero_is_the_random_orders_argmax",)),
    Mutation(
        "ar-banned-not-applied", "jaxorder/sampling/ar.py",
        'logits_BV = jnp.where(banned_V, -jnp.inf, st["logits"])',
        'logits_BV = st["logits"]',
        "AR sampler may generate PAD/MASK/BOS (banned tokens not masked out)",
        ("tests/test_sampling_ar.py::test_banned_tokens_are_never_generated",)),
    Mutation(
        "bd3-sampler-no-cache-write", "jaxorder/sampling/bd3.py",
        'out["cache"] = lax.cond(last, lambda c: c, write, st["cache"])',
        'out["cache"] = st["cache"]',
        "bd3 sampler never writes finished blocks into the KV cache",
        ("tests/test_sampling_bd3.py::test_cached_equals_uncached[confidence-0.0]",)),
    Mutation(
        "remask-highest-scores", "jaxorder/sampling/remask.py",
        "rank_Bn = jnp.argsort(jnp.argsort(score_Bn, axis=1), axis=1)",
        "rank_Bn = jnp.argsort(jnp.argsort(-score_Bn, axis=1), axis=1)",
        "the corrector remasks the best-scoring committed tokens instead of the worst",
        (REMASK + "test_remasking_equals_the_plain_reference",)),
    Mutation(
        "remask-budget-never-zero", "jaxorder/sampling/remask.py",
        "later = jnp.maximum(steps_left - 1, 0).astype(jnp.float32)",
        "later = jnp.maximum(steps_left, 0).astype(jnp.float32)",
        "the remasking budget does not reach 0 at a block's last step (masks can be left unfilled)",
        (REMASK + "test_the_budget_decays_to_zero_at_a_blocks_last_step",
         REMASK + "test_remasking_equals_the_plain_reference")),
    Mutation(
        "remask-stale-scores", "jaxorder/sampling/remask.py",
        "return jnp.where(valid_Bn, score_Bn, jnp.inf), jnp.int32(1), jnp.int32(n * L)",
        'return jnp.where(valid_Bn, jnp.take_along_axis(st["lp_at"], pos_Bn, axis=1), jnp.inf), '
        "jnp.int32(1), jnp.int32(n * L)",
        "candidates ranked by their log-prob at commit time, not re-scored under the current conditionals",
        (REMASK + "test_remasking_equals_the_plain_reference",)),
    Mutation(
        "remask-logprob-kept", "jaxorder/sampling/remask.py",
        'logprob=st["logprob"] - jnp.sum(jnp.where(back_BL, st["lp_at"], 0.0), axis=1),',
        'logprob=st["logprob"],',
        "a remasked token's log-prob stays in the sample's logprob",
        (REMASK + "test_remasking_equals_the_plain_reference",)),
    # ------------------------------------------------------------------ training and resume
    Mutation(
        "resume-step-not-restored", "jaxorder/training/loop.py",
        "start_step, state = restored",
        "_, state = restored",
        "resume restores the state but restarts the step count at 0",
        ("tests/test_train.py::test_corrupted_newest_checkpoint_train_resumes_from_previous",)),
    Mutation(
        "resume-iterator-not-restored", "jaxorder/training/loop.py",
        "restored = ckpt.restore_latest(placement.abstract_state(cfg, optimizer), iterator)",
        "restored = ckpt.restore_latest(placement.abstract_state(cfg, optimizer))",
        "resume does not restore the data iterator position (replays the first batches)",
        ("tests/test_train.py::test_corrupted_newest_checkpoint_train_resumes_from_previous",)),
    Mutation(
        "step-rng-not-from-step", "jaxorder/training/step.py",
        'rng = jax.random.fold_in(base_rng, state["step"])',
        "rng = base_rng",
        "every train step draws the same randomness (rng not derived from the step)",
        ("tests/test_train_step.py::test_step_rng_is_folded_from_the_state_step",)),
    # ------------------------------------------------------------------ reliability (docs/reliability.md)
    Mutation(
        "finite-check-loss-only", "jaxorder/training/step.py",
        "finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)",
        "finite = jnp.isfinite(loss)",
        "a step with a finite loss but a non-finite gradient is applied (NaN parameters)",
        ("tests/test_bad_steps.py::test_a_non_finite_step_keeps_params_and_optimizer_state",)),
    Mutation(
        "bad-steps-never-reset", "jaxorder/training/health.py",
        "                self.consecutive = 0\n                continue",
        "                continue",
        "a good step does not reset the count of consecutive bad steps (scattered bad steps stop the run)",
        ("tests/test_bad_steps.py::test_consecutive_bad_steps_stop_the_run_with_the_last_checkpoint_intact",)),
    Mutation(
        "run-lock-shared", "jaxorder/training/run_lock.py",
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
        "the run-directory lock is shared: two writers both get it",
        ("tests/test_run_lock.py::test_a_second_writer_is_refused_with_one_line",)),
    Mutation(
        "restore-every-error-is-damage", "jaxorder/training/restore_errors.py",
        "        if marker in text:\n            return hint",
        "        if marker in text:\n            pass",
        "a storage or shape error on restore is taken for damage: silent fallback to an older step",
        ("tests/test_restore.py",)),
    Mutation(
        "metrics-keep-cut-lines", "jaxorder/training/metrics.py",
        'kept = [line for line, record in records if record is not None and record.get("step", 0) <= step]',
        'kept = [line for line, record in records if record is None or record.get("step", 0) <= step]',
        "resume keeps a metrics line cut short by a killed writer (the next line is appended to it)",
        ("tests/test_bad_input.py::test_a_metrics_line_cut_short_is_dropped_on_resume",)),
    Mutation(
        "metrics-keep-future-lines", "jaxorder/training/metrics.py",
        'kept = [line for line, record in records if record is not None and record.get("step", 0) <= step]',
        'kept = [line for line, record in records if record is not None]',
        "resume keeps metrics of steps after the restored checkpoint (they are logged twice)",
        ("tests/test_train.py::test_corrupted_newest_checkpoint_train_resumes_from_previous",
         "tests/test_bad_input.py::test_a_metrics_line_cut_short_is_dropped_on_resume")),
    Mutation(
        "resume-any-change", "jaxorder/training/run_dir.py",
        "conflicts = [d for d in changes if not d.startswith(RESUMABLE_CHANGES)]",
        "conflicts = []",
        "resuming with a changed model or data config is accepted (a silently different run)",
        ("tests/test_resume_changes.py::test_any_other_change_is_refused_naming_the_key",)),
    Mutation(
        "iterator-state-any-processes", "jaxorder/data/iterator_state.py",
        'if not (isinstance(first, dict) and set(first) == {"next_index"} and all(s == first for s in states'
        ')):',
        'if not isinstance(first, dict):',
        "a process-specific iterator state is re-sliced for another process count (wrong data order)",
        ("tests/test_prepared_data.py::test_prepared_two_process_slices_and_one_to_two_process_resume",)),
    # ------------------------------------------------------------------ the seams (registries, lifecycle)
    Mutation(
        "sampler-takes-any-option", "jaxorder/sampling/base.py",
        "    if unread:\n",
        "    if False:\n",
        "the lifecycle silently ignores options the sampler does not read",
        ("tests/test_sampling_bd3.py::test_bad_inputs",)),
    Mutation(
        "ar-ragged-rows-fill-the-buffer", "jaxorder/sampling/ar.py",
        "end_B = (known_B + new_B).astype(np.int32)",
        "end_B = np.full_like(known_B, rows_BL.shape[1] + 1)",
        "AR rows ending in PAD are generated to the buffer's end",
        ("tests/test_sampling_ar.py::test_cached_equals_uncached_at_temperature_zero",)),
    Mutation(
        "spec-accept-q-over-p", "jaxorder/sampling/ar_speculative.py",
        "return u_BK * q_BK < p_BK",
        "return u_BK * p_BK < q_BK",
        "speculative decoding accepts a draft with probability min(1, q/p) instead of min(1, p/q)",
        (SPEC + "test_samples_follow_the_targets_chain_rule",
         SPEC + "test_greedy_equals_ar_token_for_token")),
    Mutation(
        "spec-residual-unclipped", "jaxorder/sampling/ar_speculative.py",
        "r_BKV = jnp.maximum(p_BKV - q_BKV, 0.0)",
        "r_BKV = p_BKV - q_BKV",
        "a rejected draft slot is resampled from p - q without max(0, .) (negative 'probabilities')",
        (SPEC + "test_samples_follow_the_targets_chain_rule",)),
    Mutation(
        "spec-target-no-rollback", "jaxorder/sampling/ar_speculative.py",
        "cache=_set_index(cache, new_n_B - 1)",
        "cache=_set_index(cache, new_n_B)",
        "the target's cache index after a round skips a slot (the last kept token is never fed)",
        (SPEC + "test_greedy_equals_ar_token_for_token",)),
    Mutation(
        "spec-draft-catch-up-off-by-one", "jaxorder/sampling/ar_speculative.py",
        "last_B2 = jnp.maximum(new_n_B[:, None] - 2 + jnp.arange(2), 0)",
        "last_B2 = jnp.maximum(new_n_B[:, None] - 1 + jnp.arange(2), 0)",
        "the draft catches up one slot late (still exact: only the acceptance rate drops)",
        (SPEC + "test_greedy_equals_ar_token_for_token",)),
    # ------------------------------------------------------------------ fast masked decoding
    Mutation(
        "threshold-no-forced-commit", "jaxorder/sampling/mdm_steps.py",
        "    return jnp.where(steps_left <= 1, eligible_BL.sum(axis=1), 1).astype(jnp.int32)",
        "    return jnp.where(steps_left <= 1, eligible_BL.sum(axis=1), 0).astype(jnp.int32)",
        "threshold / factor rules without the one forced commit: a step may make no progress",
        (FAST + "test_threshold_step_commits_exactly_those_above_tau_plus_the_forced_one",)),
    Mutation(
        "factor-n-not-n-plus-1", "jaxorder/sampling/mdm_steps.py",
        "    ok_BL = ((n_L + 1.0) * (1.0 - p_BL) < factor) & (p_BL >= 0.0)",
        "    ok_BL = (n_L * (1.0 - p_BL) < factor) & (p_BL >= 0.0)",
        "factor rule bound n(1 - p_n) instead of (n + 1)(1 - p_n): commits too many",
        (FAST + "test_factor_count_matches_brute_force",
         FAST + "test_parallel_rules_equal_a_plain_decoding_loop[factor-1.0]")),
    Mutation(
        "prophet-thirds-reversed", "jaxorder/sampling/mdm_steps.py",
        "PROPHET_SCALES = (1.5, 1.0, 0.5)",
        "PROPHET_SCALES = (0.5, 1.0, 1.5)",
        "Prophet's gap threshold grows with progress instead of shrinking",
        (FAST + "test_prophet_thresholds_follow_the_thirds_of_the_budget",)),
    Mutation(
        "prophet-commits-drawn-token", "jaxorder/sampling/mdm_steps.py",
        "    x_Bn = jnp.where(commit_Bn, tok_Bn, x_Bn)",
        "    x_Bn = jnp.where(commit_Bn, 0, x_Bn)",
        "Prophet's early commit writes a wrong token instead of the argmax",
        (FAST + "test_prophet_commits_the_block_at_the_argmax_once_the_gap_is_large",)),
    Mutation(
        "free-cache-no-catch-up", "jaxorder/sampling/mdm_cached.py",
        "lambda: window(catch_up, bl)(st, s - bl, qb))",
        "lambda: window(bl, bl)(st, s, qb))",
        "free cache: a block's first pass skips the previous block (its committed tokens stay stale)",
        (FAST + "test_every_cache_mode_is_exact_for_a_one_layer_model[free]",)),
    Mutation(
        "dual-cache-window-offset", "jaxorder/sampling/mdm_cached.py",
        "functools.partial(window(bl, bl), qs=s, qb=qb), full,",
        "functools.partial(window(bl, bl), qs=s + 1, qb=qb), full,",
        "dual / free caches recompute a window one position off the block",
        (FAST + "test_every_cache_mode_is_exact_for_a_one_layer_model[dual]",)),
    Mutation(
        "prefix-cache-window", "jaxorder/sampling/mdm_cached.py",
        "functools.partial(window(L - s, nb), qs=s, qb=s), full,",
        "functools.partial(window(L - s - 1, nb), qs=s + 1, qb=s), full,",
        "prefix cache recomputes [s + 1, L) instead of [s, L)",
        (FAST + "test_every_cache_mode_is_exact_for_a_one_layer_model[prefix]",)),
    Mutation(
        "rewrite-all-mask-bidirectional", "jaxorder/model/decode.py",
        "    return decode_step(params, cfg, cache, tokens_BQ, positions_BQ, \"all\")",
        "    return decode_step(params, cfg, cache, tokens_BQ, positions_BQ, \"bidirectional\")",
        "the cached window does not see the slots after it (the suffix cache is never read)",
        (FAST + "test_rewrite_positions_is_the_bidirectional_pass_and_reads_stale_slots",)),
    Mutation(
        "chunk-anchor-shifts-positions", "jaxorder/model/decode.py",
        "np.maximum(np.arange(C + 1) - 1, 0)[None, :]",
        "np.arange(C + 1)[None, :]",
        "chunk prefill: the chunk's tokens sit one position late (the anchor takes the first one)",
        (FAST + "test_chunked_cache_refreshed_every_step_equals_a_plain_loop_over_reference_passes",)),
    Mutation(
        "chunk-last-not-forced", "jaxorder/model/chunk_attention.py",
        "    score_BN = score_BN.at[:, N - 1].set(jnp.inf)",
        "    score_BN = score_BN",
        "chunk selection may drop the chunk next to the generated text",
        (FAST + "test_chunk_selection_is_the_top_k_by_mean_query_key_score_plus_the_last_chunk",)),
    Mutation(
        "chunk-padding-attended", "jaxorder/model/chunk_attention.py",
        "                                jnp.ones((B, k_BTHD.shape[1] - P), bool)], axis=1)",
        "                                jnp.ones((B, k_BTHD.shape[1] - P), bool)], axis=1) | True",
        "generated positions attend to the padding slots of the last prompt chunk",
        (FAST + "test_chunked_cache_with_a_padded_last_chunk_ignores_the_padding",)),
    Mutation(
        "chunk-window-slot-offset", "jaxorder/sampling/mdm_cached.py",
        "slot=qs - block_start + layout.prompt_slots,",
        "slot=qs - block_start + layout.prompt_slots - 1,",
        "chunked cache: generated positions written one slot early (over the last chunk's last slot)",
        (FAST + "test_chunked_cache_refreshed_every_step_equals_a_plain_loop_over_reference_passes",)),
    Mutation(
        "ar-ness-counts-gap-closing", "jaxorder/evaluation/commit_order.py",
        "        extends += bool(done[:j].all() and (j + 1 == L or not done[j + 1]))",
        "        extends += bool(done[:j].all())",
        "AR-ness counts a commit that closes the last gap as extending the prefix (r2l scores 1/n)",
        ("tests/test_commit_order.py::test_left_to_right_is_one_and_right_to_left_is_zero[0]",)),
    Mutation(
        "bd3-commit-order-not-written-back", "jaxorder/sampling/bd3.py",
        'lax.dynamic_update_slice_in_dim(st["committed_at"], blk["committed_at"],',
        'lax.dynamic_update_slice_in_dim(st["committed_at"], st["committed_at"],',
        "bd3's commit order is never written back from the block loop",
        ("tests/test_commit_order.py::test_masked_and_block_samplers_record_each_commit_step[bd3]",)),
    Mutation(
        "companion-order-unchecked", "jaxorder/sampling/base.py",
        'if objective.sampling != "ar" or objective.reading_order != order:',
        'if objective.sampling != "ar":',
        "a companion of the other reading order (an r2l guide, an l2r draft of an r2l target) is accepted",
        (GUIDED + "test_one_line_errors", SPEC + "test_one_line_errors")),
    Mutation(
        "companion-tokenizer-self-compare", "jaxorder/sampling/base.py",
        "if tokenizer_of(ccfg.data) != tokenizer_of(cfg.data):",
        "if tokenizer_of(ccfg.data) != tokenizer_of(ccfg.data):",
        "the companion's tokenizer is compared with itself: a BPE guide or draft of a byte run is accepted",
        (GUIDED + "test_one_line_errors", SPEC + "test_one_line_errors")),
    Mutation(
        "guided-not-a-run", "jaxorder/sampling/guided.py",
        "return eligible_BL & (jnp.cumprod(ok_BL.astype(jnp.int32), axis=1) > 0)",
        "return eligible_BL & (ok_BL > 0)",
        "guided sampler accepts every proposal the guide likes, not only the run from the first open one",
        (GUIDED + "test_equals_a_plain_loop_with_the_uncached_guide[whole]",)),
    Mutation(
        "guided-guide-scores-previous-token", "jaxorder/sampling/guided.py",
        "jnp.take_along_axis(buf_BS, slot_BW + 1, axis=1)",
        "jnp.take_along_axis(buf_BS, slot_BW, axis=1)",
        "the guide's log p read for the token in the fed slot (the previous position) instead of the next",
        (GUIDED + "test_equals_a_plain_loop_with_the_uncached_guide[whole]",
         GUIDED + "test_cached_guide_log_probs_equal_the_uncached_guide_on_the_output[0-0]")),
    Mutation(
        "guided-cache-keeps-rejected", "jaxorder/sampling/guided.py",
        'c=jnp.minimum(first_true(st["masked"]), c_B + W)',
        'c=jnp.maximum(first_true(st["masked"]), c_B + W)',
        "the guide's cache index after a step keeps the slots of rejected proposals (a stale cache)",
        (GUIDED + "test_cached_guide_log_probs_equal_the_uncached_guide_on_the_output[2-0]",)),
    Mutation(
        "guided-catch-up-overshoots", "jaxorder/sampling/guided.py",
        "return feed_row(cache, c, buf_S)[1], jnp.minimum(f, c + W), n + 1",
        "return feed_row(cache, c, buf_S)[1], c + W, n + 1",
        "the guide's catch-up keeps a whole window, past the first open position (proposals cached)",
        (GUIDED + "test_equals_a_plain_loop_with_the_uncached_guide[window3-catch-up]",)),
    Mutation(
        "any-run-judges", "jaxorder/evaluation/sample_quality.py",
        "    if not objectives.of(cfg).judge:\n",
        "    if False:\n",
        "a run whose nll is not the exact left-to-right likelihood judges samples",
        (SAMPLE_MDM + "test_unigram_entropy_and_judge_nll",)),
    Mutation(
        "family-checks-skipped", "jaxorder/config/checks.py",
        "    OBJECTIVES.get(o.name).validate_config(cfg)",
        "    OBJECTIVES.get(o.name)",
        "config validation skips the chosen family's own checks",
        ("tests/test_registry_toys.py::test_toy_objective_trains_evaluates_and_samples",
         "tests/test_config.py::test_bad_overrides_raise_one_line_errors")),
    # ------------------------------------------------------------------ learned commit filter
    Mutation(
        "learned-floor-one", "jaxorder/sampling/learned.py",
        "commit_top_k(prob_BL, eligible_BL, k=floor_B)",
        "commit_top_k(prob_BL, eligible_BL, k=1)",
        "learned sampler: a block's last budgeted step commits only one position, not all it has left",
        (LEARNED + "test_learned_equals_the_host_reference_loop",)),
    Mutation(
        "learned-eos-counts-commits", "jaxorder/sampling/learned.py",
        "left_BL = masked_BL & ~commit_BL",
        "left_BL = masked_BL",
        "end-of-text stop judged on every masked position, the ones this step commits included",
        (LEARNED + "test_end_of_text_stop_fills_the_rest_and_stops", LEARNED + "test_commit_rule_by_hand")),
    Mutation(
        "learned-eos-stop-ignored", "jaxorder/sampling/learned.py",
        "axis=1) & jnp.all(end_BL | ~left_BL, axis=1) & stop",
        "axis=1) & jnp.all(end_BL | ~left_BL, axis=1)",
        "--no-eos-stop has no effect: the end-of-text stop still fills and stops rows",
        (LEARNED + "test_end_of_text_stop_fills_the_rest_and_stops", LEARNED + "test_commit_rule_by_hand")),
    Mutation(
        "filter-std-multiplies", "jaxorder/sampling/commit_filter.py",
        'z_NF = (x_NF - arrays["mean"]) / arrays["std"]',
        'z_NF = (x_NF - arrays["mean"]) * arrays["std"]',
        "the filter's standardization multiplies by the std instead of dividing",
        (LEARNED + "test_learned_equals_the_host_reference_loop",)),
    Mutation(
        "filter-no-relu", "jaxorder/sampling/commit_filter.py",
        'hidden_NH = jax.nn.relu(z_NF @ arrays["w1"] + arrays["b1"])',
        'hidden_NH = z_NF @ arrays["w1"] + arrays["b1"]',
        "the filter's hidden layer is linear (the MLP collapses to logistic regression)",
        (FILTER + "test_fit_separates_linear_and_xor_cases",)),
    Mutation(
        "filter-fit-flipped-labels", "jaxorder/evaluation/filter_training.py",
        "optax.sigmoid_binary_cross_entropy(filter_logits({**fixed, **p}, xb), yb)",
        "optax.sigmoid_binary_cross_entropy(filter_logits({**fixed, **p}, xb), 1.0 - yb)",
        "filter training fits the complement of the label",
        (FILTER + "test_fit_separates_linear_and_xor_cases",)),
    Mutation(
        "traces-next-step-key", "jaxorder/sampling/traces.py",
        "int(budget_np[b]), jax.random.fold_in(key, j))",
        "int(budget_np[b]), jax.random.fold_in(key, j + 1))",
        "the trace replay draws its predictions with the next step's noise, not the sampler's",
        (FILTER + "test_recording_does_not_change_samples_and_rows_are_the_blocks_masked_positions",)),
    Mutation(
        "traces-progress-global-step", "jaxorder/sampling/traces.py",
        "masked, generated, in_block, j - first,",
        "masked, generated, in_block, j,",
        "the trace's progress feature counts steps from the start of the decode, not of the block",
        (FILTER + "test_trace_features_by_hand",)),
    # ------------------------------------------------------------------ Info-Gain, cumulative uncertainty
    Mutation(
        "info-gain-commits-the-costliest", "jaxorder/sampling/info_gain.py",
        "choice_B = jnp.argmin(cost_CB, axis=0)",
        "choice_B = jnp.argmax(cost_CB, axis=0)",
        "Info-Gain commits the most expensive candidate",
        (IG + "test_batched_choice_is_the_argmin_of_the_look_ahead_costs",
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.0]")),
    Mutation(
        "info-gain-skips-not-counted", "jaxorder/sampling/info_gain.py",
        "k_rest_B = k_B - skip_BL.sum(axis=1)",
        "k_rest_B = k_B",
        "skipped positions do not count toward k: a step commits more than the confidence rule",
        (IG + "test_confident_positions_are_committed_without_evaluation",
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.6]")),
    Mutation(
        "info-gain-reuses-candidate-0", "jaxorder/sampling/info_gain.py",
        "jnp.take_along_axis(la_CBLV, choice_B[None, :, None, None], axis=0)[0]",
        "la_CBLV[0]",
        "the next step reuses the first candidate's look-ahead instead of the chosen one's",
        (IG + "test_batched_choice_is_the_argmin_of_the_look_ahead_costs",
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.0]")),
    Mutation(
        "uncertainty-is-surprisal", "jaxorder/sampling/mdm_steps.py",
        "jnp.sum(jnp.where(commit_BL, ent_BL, 0.0), axis=1)",
        "jnp.sum(jnp.where(commit_BL, -lp_tok_BL, 0.0), axis=1)",
        "the cumulative uncertainty sums -log p of the committed tokens instead of their entropy",
        (IG + "test_uncertainty_is_the_entropy_at_commit_time[confidence-options0]",)),
    # ------------------------------------------------------------------ tpu/launch.py --retries
    Mutation(
        "recovery-retry-off-by-one", "tpu/launch_recovery.py",
        "if rec.retries >= rec.max_retries:",
        "if rec.retries > rec.max_retries:",
        "--retries N recovers N + 1 times before giving up",
        (TPU_REC + "test_step_counts_retries_and_gives_up_after_n",
         TPU_REC + "test_fake_gcloud_gives_up_after_n_retries")),
    Mutation(
        "recovery-done-on-any-worker", "tpu/launch_recovery.py",
        "if all(c == 0 for c in codes):",
        "if any(c == 0 for c in codes):",
        "the watch ends as done when the first worker exits 0 while the others still run",
        (TPU_REC + "test_step_worker_answers[workers1-poll]",)),
    Mutation(
        "recovery-delete-missing-tpu", "tpu/launch_recovery.py",
        "first = CREATE if event.state == NOT_FOUND else DELETE",
        "first = DELETE",
        "a TPU that is already gone is deleted again before the create",
        (TPU_REC + "test_step_not_found_creates_without_delete_and_waits_out_other_states",
         TPU_REC + "test_fake_gcloud_relaunch_in_place_create_when_gone_and_stop_on_a_crash")),
    Mutation(
        "recovery-peer-crash-is-fatal", "tpu/launch_recovery.py",
        "if failed and not preempted:",
        "if failed:",
        "a worker crashing because a preempted peer vanished stops the watch instead of relaunching",
        (TPU_REC + "test_step_worker_answers[workers6-launch]",)),
    Mutation(
        "slurm-gpu-by-global-rank", "jaxorder/platform/distributed.py",
        'return [int(env["SLURM_LOCALID"])]',
        'return [int(env["SLURM_PROCID"])]',
        "distributed.mode=slurm picks the GPU by the global task id (GPU 9 on an 8-GPU node)",
        (SLURM + "test_slurm_arguments[env0-local0]",)),
    Mutation(
        "slurm-port-off-by-one", "jaxorder/platform/distributed.py",
        "port = 65535 - 2**12 + 1 +",
        "port = 65535 - 2**12 +",
        "the coordinator port differs from JAX's SLURM detection (processes started either way disagree)",
        (SLURM + "test_coordinator_equals_jax_slurm_detection[node01]",)),
    # ------------------------------------------------------------------ observability
    Mutation(
        "flops-counts-embedding", "jaxorder/platform/flops.py",
        'LOOKUP_TABLES = ("embed", "target_embed")',
        'LOOKUP_TABLES = ("target_embed",)',
        "the token-embedding lookup table is counted as matmul parameters (FLOPs/token and MFU too high)",
        (OBSERVE + "test_flops_per_token_matches_a_hand_count[False]",)),
    Mutation(
        "flops-4n", "jaxorder/platform/flops.py",
        "return 6.0 * n_matmul_params + attention",
        "return 4.0 * n_matmul_params + attention",
        "4N (forward + one backward matmul) instead of 6N FLOPs per token",
        (OBSERVE + "test_flops_per_token_matches_a_hand_count[False]",)),
    Mutation(
        "mfu-ignores-devices", "jaxorder/platform/flops.py",
        "(peak_tflops_per_device * 1e12 * n_devices)",
        "(peak_tflops_per_device * 1e12)",
        "MFU against one device's peak instead of the mesh's",
        (OBSERVE + "test_throughput_values_and_mfu_arithmetic",)),
    Mutation(
        "clock-keeps-excluded-time", "jaxorder/training/observe.py",
        "steps, seconds = self._steps, now - self._start - self._excluded",
        "steps, seconds = self._steps, now - self._start",
        "checkpoint and evaluation time counted as step time",
        (OBSERVE + "test_step_clock_leaves_out_excluded_time",)),
    Mutation(
        "cache-dir-keeps-dotdot", "jaxorder/platform/compile_cache.py",
        'path = path.parent if part == ".." else',
        'path = path / part if part == ".." else',
        "a relative compile.cache_dir keeps '..' literally (on gs:// an object path, not the parent)",
        ("tests/test_aot.py::test_relative_cache_dirs_resolve_under_the_run_directory",)),
    # ------------------------------------------------------------------ gs:// run directories
    Mutation(
        "remote-metrics-skip-base", "jaxorder/training/metrics.py",
        "return parts[bases[-1]:] if bases else parts",
        "return parts[bases[-1] + 1:] if bases else parts",
        "readers of a remote run dir skip the base object a resume wrote (its kept lines vanish)",
        (GCS + "test_remote_metrics_resume_drops_past_checkpoint_and_cut_lines",)),
    Mutation(
        "remote-lock-dead-holder-alive", "jaxorder/training/run_lock.py",
        "    except ProcessLookupError:\n        return False",
        "    except ProcessLookupError:\n        return True",
        "a gs:// lock left by a dead process of this host is never taken over (kill -9 blocks the resume)",
        (GCS + "test_remote_run_lock",)),
    Mutation(
        "url-made-absolute", "jaxorder/training/loop.py",
        'if cfg.data.path and "://" not in cfg.data.path',
        'if cfg.data.path and "://" in cfg.data.path',
        "with_absolute_paths turns gs://b/x into $PWD/gs:/b/x again (and leaves relative paths relative)",
        (GCS + "test_urls_stay_urls",)),

    # ------------------------------------------------------------------ preemption (agreed by all processes)
    Mutation(
        "preempt-min-of-sigterms", "jaxorder/training/preemption.py",
        "flags_PF[:, SIGTERM].max()", "flags_PF[:, SIGTERM].min()",
        "the processes stop only when every one of them saw SIGTERM (min instead of max)",
        (PRE + "test_any_process_sigterm_stops_and_only_process_zero_clock_checkpoints[numpy]",)),
    Mutation(
        "preempt-process-0-sigterm-only", "jaxorder/training/preemption.py",
        "flags_PF[:, SIGTERM].max()", "flags_PF[0, SIGTERM].max()",
        "only process 0's own SIGTERM flag counts: a signal that reaches process 1 alone is ignored",
        (PRE + "test_any_process_sigterm_stops_and_only_process_zero_clock_checkpoints[numpy]",
         PRE2 + "test_sigterm_to_one_process_saves_the_same_step_on_both_and_resumes")),
    Mutation(
        "preempt-last-process-clock", "jaxorder/training/preemption.py",
        "flags_PF[0, DUE]", "flags_PF[-1, DUE]",
        "the time-based checkpoint follows the last process's clock instead of process 0's",
        (PRE + "test_any_process_sigterm_stops_and_only_process_zero_clock_checkpoints[numpy]",)),
    Mutation(
        "preempt-clock-not-reset", "jaxorder/training/preemption.py",
        "        if decision.checkpoint:\n            self.clock.reset()",
        "        if decision.checkpoint:\n            pass",
        "a time-based checkpoint does not restart the clock: it saves again at every following step",
        (PRE + "test_one_process_decides_at_once_and_a_checkpoint_restarts_the_clock",
         PRE + "test_several_processes_act_one_step_late_on_the_exchanged_flags")),
    Mutation(
        "rope-bound-returns-failing-end", "jaxorder/model/rope.py",
        "    return float(np.exp(log_hi))", "    return float(np.exp(log_lo))",
        "the RoPE base bound returns the bisection's failing end (criterion false at the printed base)",
        (POS + "test_rope_base_bound_is_the_edge_of_the_criterion_and_grows_with_context",)),
    Mutation(
        "learned-positions-also-rotated", "jaxorder/model/transformer.py",
        '    if cfg.positions != "rope":\n        return x_BLHD',
        '    if cfg.positions == "none":\n        return x_BLHD',
        "learned-position models also get RoPE on the XLA path (the fused kernel does not rotate them)",
        (POS + "test_pallas_path_skips_rotation",)),
    Mutation(
        "ablate-head-dim-not-head", "jaxorder/experiments/analysis/ablation.py",
        'attn["out"] = attn["out"].at[head].set(0.0)', 'attn["out"] = attn["out"].at[:, head].set(0.0)',
        "zeroing a head clears one head-dim row of every head instead of the head's rows",
        ("tests/test_slash_ablation.py::test_zeroed_output_rows_equal_removing_the_heads_attention_output",)),
    Mutation(
        "move-aside-on-every-process", "jaxorder/training/checkpoint.py",
        "                if is_main_process():\n                    for bad_step",
        "                if True:\n                    for bad_step",
        "every process renames the same damaged checkpoint directory",
        (PRE2 + "test_two_processes_move_a_damaged_checkpoint_aside_once",)),
    # ------------------------------------------------------------------ insertion (ilm)
    Mutation(
        "ilm-gap-off-by-one", "jaxorder/objectives/ilm.py",
        "jnp.zeros((L + 1,), jnp.int32).at[g].add(d)",
        "jnp.zeros((L + 1,), jnp.int32).at[g + 1].add(d)",
        "gap counts off by one gap: a dropped token is counted in the gap after its own",
        (ILM + "test_gap_targets_hand_built", ILM + "test_loss_equals_plain_reference")),
    Mutation(
        "ilm-clip-one-short", "jaxorder/objectives/ilm.py",
        "jnp.minimum(count_BS, max_gap)",
        "jnp.minimum(count_BS, max_gap - 1)",
        "gap counts clipped one below ilm_max_gap (the top length class is never a target)",
        (ILM + "test_gap_targets_hand_built", ILM + "test_loss_equals_plain_reference")),
    Mutation(
        "ilm-target-is-left-neighbour", "jaxorder/objectives/ilm.py",
        "first_BS = jnp.clip(src_BS + 1, 0, L - 1)",
        "first_BS = jnp.clip(src_BS, 0, L - 1)",
        "the token target of a gap is its kept left neighbour, not the first dropped token",
        (ILM + "test_gap_targets_hand_built", ILM + "test_loss_equals_plain_reference")),
    Mutation(
        "ilm-padding-attended", "jaxorder/model/transformer.py",
        "mask_LL = mask_LL[None, None] & key_valid_BL[:, None, None, :]",
        "mask_LL = mask_LL[None, None] | key_valid_BL[:, None, None, :]",
        "padding keys are attended: the number of dropped tokens leaks into the gaps' predictions",
        (ILM + "test_loss_equals_plain_reference",)),
    Mutation(
        "ilm-bound-without-stop", "jaxorder/objectives/ilm.py",
        "jnp.where(j < n, insert_B, log_s_B)",
        "jnp.where(j < n, insert_B, 0.0)",
        "the insertion-path bound leaves out the final stop probability",
        (ILM + "test_order_nll_matches_step_by_step_reference",
         ILM + "test_sampler_logprob_is_the_path_likelihood")),
    Mutation(
        "ilm-insert-right-of-gap", "jaxorder/sampling/ilm.py",
        "at_B = gap_B + 1",
        "at_B = gap_B",
        "the sampler inserts before the gap's left neighbour instead of after it",
        (ILM + "test_sampler_forced_insertion_goes_where_and_what[0.0]",)),
    # ------------------------------------------------------------------ score, rerank, perm orders
    Mutation(
        "score-window-overlap", "jaxorder/evaluation/scoring.py",
        "plan.append(Window(end - window, end, scored - (end - window), window))",
        "plan.append(Window(end - window, end, scored - (end - window) - 1, window))",
        "a later strided window also scores the last token of the one before it (counted twice)",
        (SCORE + "test_window_plan_scores_every_token_once[40-16-8-l2r]",)),
    Mutation(
        "r2l-token-terms-unflipped", "jaxorder/objectives/r2l.py",
        "return jnp.flip(l2r.sequence_token_nll(params, jnp.flip(tokens_BL, axis=1), cfg), axis=1)",
        "return l2r.sequence_token_nll(params, jnp.flip(tokens_BL, axis=1), cfg)",
        "r2l per-token terms stay in reversed order (same sum, wrong positions)",
        (SCORE + "test_long_line_is_scored_in_strided_windows[r2l]",)),
    Mutation(
        "any-order-terms-slot-order", "jaxorder/objectives/ao_ar.py",
        "return jnp.zeros_like(slot_BL).at[rows_B1, order_BL].set(slot_BL)",
        "return slot_BL",
        "any-order per-token terms left in slot order instead of position order",
        (SCORE + "test_any_order_terms_in_position_order",)),
    Mutation(
        "perm-open-range-skips-k", "jaxorder/orders.py",
        "listed += [i for i in range(open_from, length) if i not in seen]",
        "listed += [i for i in range(open_from + 1, length) if i not in seen]",
        "the open range k- starts after k",
        (PERM + "test_resolve[perm:5,1,2,3,4,0,6--9-expected0]",)),
    Mutation(
        "given-order-rank-is-order", "jaxorder/sampling/given_order.py",
        "return np.argsort(order_BL, axis=1).astype(np.int32)",
        "return order_BL.astype(np.int32)",
        "the named order used as each position's rank (its inverse permutation is generated instead)",
        (GIVEN + "test_positions_are_generated_in_exactly_the_named_order[spec-perm-True]",)),
    Mutation(
        "latent-w-random-takes-a-named-candidate", "jaxorder/objectives/latent_order.py",
        "metrics[\"w_random\"] = w_BK[:, len(names):].mean()",
        "metrics[\"w_random\"] = w_BK[:, len(names) - 1:].mean()",
        "w_random averages the last named candidate in with the random ones",
        (CANDS + "test_named_candidates_follow_l2r_r2l_and_precede_the_random_ones",)),
    Mutation(
        "latent-named-candidates-dropped", "jaxorder/objectives/latent_order.py",
        "return [*(orders.NAMED if include_fixed_orders else ()), *orders.split_list(named)]",
        "return [*(orders.NAMED if include_fixed_orders else ())]",
        "objective.candidate_orders ignored: the named candidates never join the loss",
        (CANDS + "test_loss_and_nll_are_over_exactly_the_named_orders",)),
    Mutation(
        "rerank-judge-slice-off-by-one", "jaxorder/evaluation/rerank.py",
        "out.append(r[\"terms\"][prompt_len:].sum() / (LN2 * size) if size else math.nan)",
        "out.append(r[\"terms\"][prompt_len - 1:].sum() / (LN2 * size) if size else math.nan)",
        "the judge's continuation NLL includes the prompt's last token",
        (RERANK + "test_scorer_equal_to_judge_picks_the_judges_best",)),
    Mutation("mixture-bound-log-k", "jaxorder/experiments/analysis/mixtures.py",
             "lme_WG = np.logaddexp.reduce(groups_WGK, axis=2) - math.log(k)",
             "lme_WG = np.logaddexp.reduce(groups_WGK, axis=2) - math.log(k + 1)",
             "K-order bound normalised by K+1 instead of K (log-sum-exp, not log-mean-exp)",
             (MIX + "test_k1_bound_is_the_single_order_nll_and_groups_are_disjoint",
              MIX + "test_bound_in_expectation_non_increasing_in_k_and_tends_to_all_order_mixture")),
    Mutation("grad-snr-uncentred-spread", "jaxorder/experiments/analysis/grad_snr.py",
             "spread = math.sqrt(float(((g - mean_P) ** 2).sum(axis=1).mean()))",
             "spread = math.sqrt(float(((g - 0.0) ** 2).sum(axis=1).mean()))",
             "gradient spread taken about 0 instead of about the mean gradient",
             (MIX + "test_gradient_snr_closed_form_and_against_covariance",)),
    Mutation("mdm-position-nll-step-order", "jaxorder/objectives/mdm.py",
             "nll_BL = nll_BL.at[rows_B, pos_B].set(-logp_BLV[rows_B, pos_B, target_B])",
             "nll_BL = nll_BL.at[rows_B, j].set(-logp_BLV[rows_B, pos_B, target_B])",
             "per-position chain-rule NLL stored at the reveal step instead of the revealed position",
             (MIX + "test_position_curves_sum_to_the_sequence_nll",)),
    Mutation(
        "scaling-inverse-not-inverted", "jaxorder/experiments/scaling.py",
        "(a / (loss - L_inf)) ** (1.0 / alpha)", "(a / (loss - L_inf)) ** alpha",
        "the compute needed for a loss raises to alpha instead of 1/alpha: wrong compute multiplier",
        (SCALING + "test_compute_multiplier_of_shifted_curves",)),
    Mutation(
        "scaling-fit-growing-law", "jaxorder/experiments/scaling.py",
        "return A * np.exp(-alpha * x) + L_inf", "return A * np.exp(alpha * x) + L_inf",
        "the fitted law grows with compute (sign of alpha flipped)",
        (SCALING + "test_power_law_fit_recovers_synthetic_parameters",)),
    Mutation(
        "judge-stderr-biased", "jaxorder/evaluation/sample_quality.py",
        "(k * (k - 1))", "(k * k)",
        "the judge's standard error uses the biased variance (divides by K, not K - 1)",
        (SCALING + "test_ratio_stderr_is_the_mean_stderr_for_equal_lengths_and_matches_resampling",)),
    Mutation(
        "study-reuses-stale-analysis", "jaxorder/experiments/study.py",
        "return main.stat().st_mtime > newest_checkpoint_mtime(run_dir)",
        "return main.stat().st_mtime < newest_checkpoint_mtime(run_dir)",
        "`jaxorder study` keeps an analysis older than the run's newest checkpoint and re-runs a current one",
        ("tests/test_study.py::test_is_current_needs_outputs_same_flags_and_newer_than_the_checkpoint",)),
    Mutation(
        "study-ignores-changed-flags", "jaxorder/experiments/study.py",
        'if json.loads(saved.read_text()).get("flags") != list(a.flags):',
        'if json.loads(saved.read_text()).get("flags") is None:',
        "`jaxorder study` reuses an analysis made with other flags (e.g. other --ks)",
        ("tests/test_study.py::test_is_current_needs_outputs_same_flags_and_newer_than_the_checkpoint",)),
    Mutation(
        "study-oldest-checkpoint", "jaxorder/experiments/study.py",
        "return max(p.stat().st_mtime for p in steps)", "return min(p.stat().st_mtime for p in steps)",
        "an analysis is compared with the run's oldest checkpoint, so a resumed run's stale analysis is kept",
        ("tests/test_study.py::test_is_current_needs_outputs_same_flags_and_newer_than_the_checkpoint",)),
    Mutation(
        "crossing-wrong-endpoint", "jaxorder/experiments/epochs.py",
        "xs[i - 1] + (xs[i] - xs[i - 1]) * d[i - 1] / (",
        "xs[i - 1] + (xs[i] - xs[i - 1]) * d[i] / (",
        "the crossing interpolated from the wrong end of the segment",
        ("tests/test_epochs.py::test_crossings_match_brute_force_on_random_curves",
         "tests/test_epochs.py::test_crossing_sign_touching_and_no_overlap")),
    Mutation(
        "multiply-sum-not-product", "jaxorder/data/multiply.py",
        "nums = [str(a), str(b), str(a * b)]", "nums = [str(a), str(b), str(a + b)]",
        "the multiply source writes a sum instead of the product",
        ("tests/test_multiply.py::test_every_line_is_a_correct_product_of_d_digit_factors",)),
    Mutation(
        "max-train-tokens-keeps-the-tail", "jaxorder/data/pipeline.py",
        "train_windows = train_windows[:cfg.max_train_tokens // L]",
        "train_windows = train_windows[-(cfg.max_train_tokens // L):]",
        "the unique-token budget keeps the last training tokens instead of the first",
        ("tests/test_multiply.py::test_max_train_tokens_keeps_the_first_tokens_and_not_validation",)),
    Mutation(
        "ilm-output-ignores-eos", "jaxorder/sampling/ilm.py",
        'tokens_BL = fill_after_eos(st["buf"][:, 1:], st["gen"][:, 1:], eos_id(cfg, opts))',
        'tokens_BL = st["buf"][:, 1:]',
        "the insert sampler returns text inserted after its first inserted EOS",
        ("tests/test_ilm.py::test_sampler_pads_inserted_text_after_the_first_inserted_eos",)),
    Mutation(
        "eos-fill-off-by-one", "jaxorder/sampling/eos.py",
        "after_BL = generated_BL & ((jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0)",
        "after_BL = generated_BL & ((jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 1)",
        "the masked samplers' EOS fill waits for a second EOS",
        ("tests/test_sampling_eos.py::test_commit_after_eos_commits_the_masked_positions_after_a_committed_"
         "eos_at_the_step_taken",
         "tests/test_sampling_eos.py::test_sampling_stops_early_when_only_eos_is_left[mdm-confidence]")),
    Mutation(
        "eos-fill-ignores-fixed", "jaxorder/sampling/eos.py",
        "is_eos_BL = committed_BL & (st[\"x\"] == eos)",
        "is_eos_BL = st[\"x\"] == eos",
        "a fixed EOS (prompt, template) ends the text of the masked samplers",
        ("tests/test_sampling_eos.py::test_commit_after_eos_commits_the_masked_positions_after_a_committed_"
         "eos_at_the_step_taken",)),
    Mutation(
        "l2r-eos-mask-inverted", "jaxorder/objectives/l2r.py",
        "return ~after_first_eos(tokens_BL, special_ids(cfg.model).eos)",
        "return after_first_eos(tokens_BL, special_ids(cfg.model).eos)",
        "data.eos: l2r scores only the padding instead of the document and its EOS",
        ("tests/test_data_eos.py::test_l2r_nll_and_loss_leave_out_the_padding_after_the_first_eos",
         "tests/test_data_eos.py::test_yardstick_bits_per_byte_is_nats_over_text_bytes")),
    Mutation(
        "eos-window-off-by-one", "jaxorder/data/documents.py",
        "n = -(-(len(p) + 1) // seq_len)",
        "n = -(-len(p) // seq_len)",
        "data.eos: a document of k * seq_len tokens loses its EOS window (its end is never marked)",
        ("tests/test_data_eos.py::test_windows_hold_document_eos_then_padding",)),
    Mutation(
        "eos-fill-keeps-stale-pass", "jaxorder/sampling/eos.py",
        'out["fresh"] = st["fresh"] & ~changed',
        'out["fresh"] = st["fresh"] & changed',
        "info-gain reuses the look-ahead of the sequence before the EOS fill (a stale next step)",
        ("tests/test_sampling_eos.py::test_overwritten_text_leaves_a_remasking_runs_logprob_and_fills_discard_a_"
         "kept_pass",)),
    Mutation(
        "remask-overwrite-keeps-logprob", "jaxorder/sampling/eos.py",
        'out.update(logprob=st["logprob"] - jnp.sum(jnp.where(drop_BL, st["lp_at"], 0.0), axis=1),',
        'out.update(logprob=st["logprob"] + jnp.sum(jnp.where(drop_BL, st["lp_at"], 0.0), axis=1),',
        "remasking: text overwritten by EOS padding is counted twice instead of leaving logprob",
        ("tests/test_sampling_eos.py::test_overwritten_text_leaves_a_remasking_runs_logprob_and_fills_discard_a_"
         "kept_pass",)),
    Mutation(
        "remask-padding-outlives-its-eos", "jaxorder/sampling/eos.py",
        "back_BL = padding_BL & ((jnp.cumsum(drawn_BL, axis=1) - drawn_BL) == 0)",
        "back_BL = padding_BL & ((jnp.cumsum(drawn_BL, axis=1) - drawn_BL) > 0)",
        "remasking: the padding of a remasked EOS stays and the padding of a kept one is released",
        ("tests/test_sampling_eos.py::test_release_padding_returns_the_padding_of_a_remasked_eos_to_mask",)),
    Mutation(
        "query-positions-keys-at-targets", "jaxorder/model/transformer.py",
        "k_BLHD = rotate(k_BLHD, positions_BL, cfg)", "k_BLHD = rotate(k_BLHD, q_pos_BL, cfg)",
        "model.query_positions=target: the keys are rotated at the target positions too",
        (QP + "test_rotations_are_queries_at_targets_and_keys_at_their_own_positions",)),
    Mutation(
        "query-positions-cached-keys-at-targets", "jaxorder/model/transformer.py",
        "rotate(q_BLHD, q_pos_BL, cfg), rotate(k_BLHD, positions_BL, cfg)",
        "rotate(q_BLHD, q_pos_BL, cfg), rotate(k_BLHD, q_pos_BL, cfg)",
        "KV-cache decoding in target mode: the cached keys are rotated at their slots' targets",
        (QP + "test_decode_step_equals_the_full_pass_in_target_mode",)),
    Mutation(
        "query-positions-kernel-gets-key-positions", "jaxorder/model/attention.py",
        "q_pos_BL = positions_BL if query_positions_BL is None else query_positions_BL",
        "q_pos_BL = positions_BL",
        "the fused kernel's queries are rotated at the key positions (the target mode lost on TPU/GPU)",
        (QP + "test_model_pallas_path_equals_xla_in_target_mode",)),
    Mutation(
        "query-positions-switch-ignored", "jaxorder/model/transformer.py",
        "q_pos_BL = target_positions_BL if target_q else positions_BL",
        "q_pos_BL = positions_BL if target_q else positions_BL",
        "model.query_positions=target silently runs the current mode",
        (QP + "test_order_pass_differs_between_modes_and_follows_the_config",)),
    Mutation(
        "paired-se-ddof0", "tools/paired_se.py",
        '"diff_stderr": float(diff_N.std(ddof=1) / math.sqrt(n))',
        '"diff_stderr": float(diff_N.std(ddof=0) / math.sqrt(n))',
        "the paired error of docs/study.md's differences uses the biased variance",
        (PAIRED + "test_paired_error_is_the_spread_of_the_differences_not_of_each_side",)),
    Mutation(
        "paired-se-order-draws-shifted", "tools/paired_se.py",
        "orders = order_matrix(spec, batch, length, jax.random.fold_in(rng, i), first, total)",
        "orders = order_matrix(spec, batch, length, jax.random.fold_in(rng, i + 1), first, total)",
        "the per-window random-order scores use other order draws than eval's (not its number)",
        (PAIRED + "test_per_window_scores_average_to_evals_numbers",)),
)


def _check(mutations: tuple[Mutation, ...]) -> None:
    ids = [m.id for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate mutation ids: {', '.join(duplicates)}")
    for m in mutations:
        if m.original == m.replacement or not m.tests:
            raise ValueError(f"mutation {m.id}: needs a change and at least one test")


_check(MUTATIONS)
