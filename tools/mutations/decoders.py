"""Mutations of the decoders that choose their commits: the learned commit filter and Info-Gain
(cumulative uncertainty with it)."""
from .base import (
    FILTER,
    IG,
    LEARNED,
    UNCERTAINTY,
    Mutation,
)

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ learned commit filter
    Mutation(
        "learned-floor-one", "jaxorder/sampling/learned.py",
        "commit_top_k(floor_BL, eligible_BL, k=floor_B)",
        "commit_top_k(floor_BL, eligible_BL, k=1)",
        "learned sampler: a block's last budgeted step commits only one position, not all it has left",
        (LEARNED + "test_learned_equals_the_host_reference_loop",)),
    Mutation(
        "learned-floor-ignores-confidence", "jaxorder/sampling/learned.py",
        "floor_BL = lp_tok_BL if sc.filter_floor == \"confidence\" else None",
        "floor_BL = None",
        "learned sampler: filter_floor confidence still forces the filter's favourite, not the most "
        "confident position",
        (LEARNED + "test_learned_equals_the_host_reference_loop", LEARNED
         + "test_always_no_filter_commits_one_per_step_the_most_filter_confident")),
    Mutation(
        "fixed-noise-ignored", "jaxorder/sampling/mdm_steps.py",
        "return key if opts.fixed_noise else jax.random.fold_in(key, step)",
        "return jax.random.fold_in(key, step)",
        "--fixed-noise has no effect: every step still draws fresh noise",
        (LEARNED + "test_learned_equals_the_host_reference_loop", LEARNED
         + "test_always_no_filter_commits_one_per_step_the_most_filter_confident",
         FILTER + "test_fixed_noise_traces_replay_the_decodes_noise")),
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
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.0-entropy]")),
    Mutation(
        "info-gain-surprisal-ignored", "jaxorder/sampling/info_gain.py",
        'immediate_BL = ent_BL if opts.commit_cost == "entropy" else -lp_tok_BL',
        "immediate_BL = ent_BL",
        "--commit-cost surprisal still prices a candidate's commits by their entropy",
        (IG + "test_batched_choice_is_the_argmin_of_the_look_ahead_costs",
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.0-surprisal]")),
    Mutation(
        "info-gain-skips-not-counted", "jaxorder/sampling/info_gain.py",
        "k_rest_B = k_B - skip_BL.sum(axis=1)",
        "k_rest_B = k_B",
        "skipped positions do not count toward k: a step commits more than the confidence rule",
        (IG + "test_confident_positions_are_committed_without_evaluation",
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.6-entropy]")),
    Mutation(
        "info-gain-reuses-candidate-0", "jaxorder/sampling/info_gain.py",
        "jnp.take_along_axis(la_CBLV, choice_B[None, :, None, None], axis=0)[0]",
        "la_CBLV[0]",
        "the next step reuses the first candidate's look-ahead instead of the chosen one's",
        (IG + "test_batched_choice_is_the_argmin_of_the_look_ahead_costs",
         IG + "test_candidates_match_a_brute_force_of_their_costs[0.0-entropy]")),
    Mutation(
        "uncertainty-is-surprisal", "jaxorder/sampling/mdm_steps.py",
        "jnp.sum(jnp.where(commit_BL, ent_BL, 0.0), axis=1)",
        "jnp.sum(jnp.where(commit_BL, -lp_tok_BL, 0.0), axis=1)",
        "the cumulative uncertainty sums -log p of the committed tokens instead of their entropy",
        (UNCERTAINTY + "test_uncertainty_is_the_entropy_at_commit_time[confidence-options0]",)),
)
