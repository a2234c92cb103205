"""Mutations of training and resume, reliability, the registries' seams, TPU launch, observability,
gs:// run directories and preemption."""
from .base import GCS, OBSERVE, POS, PRE, PRE2, RESTARTS, SLURM, SPEC, TPU_REC, Mutation

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ training and resume
    Mutation(
        "stop-at-ignored", "jaxorder/training/loop.py",
        "stop = cfg.train.stop_at or total", "stop = total",
        "train.stop_at does not pause the run",
        (RESTARTS + "test_stop_at_pauses_without_a_final_evaluation_and_going_on_equals_one_run",)),
    Mutation(
        "restarts-highest", "jaxorder/experiments/restarts.py",
        'best = min(record["candidates"], key=lambda c: c["bpb"])',
        'best = max(record["candidates"], key=lambda c: c["bpb"])',
        "restarts continue the candidate with the highest selection bound",
        (RESTARTS + "test_restarts_continue_the_candidate_with_the_lowest_selection_bound",)),
    Mutation(
        "restarts-reported-windows", "jaxorder/experiments/restarts.py",
        "batches = data.val_batches(cfg.eval.batches, shifted=True)",
        "batches = data.val_batches(cfg.eval.batches)",
        "restarts select on the reported validation windows",
        (RESTARTS + "test_restarts_continue_the_candidate_with_the_lowest_selection_bound",)),
    Mutation(
        "restarts-continue-base-seed", "jaxorder/experiments/restarts.py",
        'train=dataclasses.replace(t, seed=record["chosen_seed"])),', "train=t),",
        "the continued run keeps the base seed (its data order is not the chosen candidate's)",
        (RESTARTS + "test_restarts_continue_the_candidate_with_the_lowest_selection_bound",)),
    Mutation(
        "val-shift-ignored", "jaxorder/data/bundle.py",
        "idx = ((2 * np.arange(rows, dtype=np.int64) + shifted) * n) // (2 * rows)",
        "idx = ((2 * np.arange(rows, dtype=np.int64) + 0) * n) // (2 * rows)",
        "shifted validation windows are the reported ones",
        (RESTARTS + "test_shifted_validation_windows_are_apart_from_the_reported_ones",)),
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
        "end_B = (2 + last_B).astype(np.int32)",
        "end_B = np.full_like(known_B, L + 1)",
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
)
