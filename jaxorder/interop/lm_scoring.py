"""Conditional scoring of a run's model: log p(continuation | context), whole-text log-likelihood
and greedy continuation, per order family. The lm-evaluation-harness adapter
(`lm_eval_model`) is a thin layer over this.

How each family scores `log p(cont | ctx)` (`score`):
  - "ar" (l2r runs): the exact chain rule over [BOS, ctx, cont] (the run's yardstick).
  - "ar" (r2l runs): the exact joint log p(ctx, cont) read right to left. A right-to-left model
    has no prefix marginal p(ctx), so this is a LOWER BOUND on log p(cont | ctx) (it adds
    log p(ctx) <= 0) that ranks the choices of one context exactly as the conditional does.
  - "l2r" (any-order runs ao_ar / latent_order): exact, the chain rule in the left-to-right order
    (their yardstick's order). mdm runs: exact for the model read in the order "reveal the
    continuation left to right with the context visible" (one forward pass per continuation
    token; a normalized distribution of its own, not the ELBO).
  - "elbo" (mdm runs): the masked-diffusion ELBO of the continuation given the context (Monte
    Carlo over `elbo_samples` draws of t and masks): a LOWER BOUND on log p(cont | ctx) in
    expectation, the quantity mdm's yardstick reports.
Positions after the text, up to the run's window (data.seq_len), are PAD for causal models
(they see nothing after the slot) and MASK for masked diffusion (text that is unknown), so every
call has the window's shape and compiles once. Text longer than a window loses its context from
the left; whole-text scoring (`rolling`) adds up disjoint windows.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model, objectives, sampling
from jaxorder.config import ConfigError
from jaxorder.evaluation.runs import load_params, run_tokenizer
from jaxorder.objectives import ao_ar, mdm
from jaxorder.objectives.common import special_ids

SCORES = {"ar": ("ar",), "any_order": ("l2r",), "masked": ("l2r", "elbo")}


@dataclasses.dataclass
class Scored:
    logprob: float  # nats
    is_greedy: bool  # every continuation token is the model's argmax at its step


class RunScorer:
    """A run's newest checkpoint, its tokenizer and jitted scoring passes over [B, seq_len] windows."""

    def __init__(self, run_dir: str | os.PathLike, score: str = "auto", elbo_samples: int = 16, seed: int = 0,
                 batch_size: int = 8):
        self.cfg, self.params, self.step = load_params(run_dir)
        self.tokenizer = run_tokenizer(self.cfg, run_dir)
        self.objective = objectives.of(self.cfg)
        family = self.objective.sampling
        if family not in SCORES:
            raise ConfigError(f"scoring {self.cfg.objective.name} runs is not supported (families: "
                              f"{', '.join(SCORES)})")
        self.score = SCORES[family][0] if score == "auto" else score
        if self.score not in SCORES[family]:
            raise ConfigError(f"score='{score}' does not apply to {self.cfg.objective.name} runs; use one of "
                              f"{', '.join(SCORES[family])}")
        self.window = self.cfg.data.seq_len
        self.batch_size = batch_size
        self.elbo_samples = elbo_samples
        self.key = jax.random.key(seed)
        self.ids = special_ids(self.cfg.model)
        self._logits = jax.jit(self._window_logits)

    # -- model passes over full windows [B, window]
    def _window_logits(self, params: Any, tokens_BL: jnp.ndarray) -> jnp.ndarray:
        """Logits [B, L, V]: slot i predicts token i (causal families), or position i (masked)."""
        cfg = self.cfg
        if self.objective.sampling == "ar":
            bos_B1 = jnp.full_like(tokens_BL[:, :1], self.ids.bos)
            inputs_BL = jnp.concatenate([bos_B1, tokens_BL[:, :-1]], axis=1)
            positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
            return model.apply(params, cfg.model, inputs_BL, positions_BL, "causal")
        if self.objective.sampling == "any_order":
            order_BL = ao_ar.identity_orders(*tokens_BL.shape)
            return ao_ar.order_logits(params, tokens_BL, order_BL, cfg)[0]
        return mdm.masked_log_probs(params, tokens_BL, cfg)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _fit(self, ctx: Sequence[int], cont: Sequence[int]) -> tuple[list[int], int]:
        """(ctx + cont) cut from the left to one window, and where the continuation starts in it."""
        seq = list(ctx) + list(cont)
        if not cont:
            raise ConfigError("an empty continuation has no likelihood to score")
        seq = seq[-self.window:]
        return seq, len(seq) - min(len(cont), self.window)

    def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Scored]:
        """log p(cont | ctx) for each (ctx ids, cont ids) pair, as `score` defines it."""
        if self.score == "ar":
            return self._causal(pairs, reverse=self.objective.reading_order == "r2l")
        if self.score == "l2r" and self.objective.sampling == "any_order":
            return self._causal(pairs, reverse=False)
        if self.score == "l2r":
            return [self._masked_chain(*pair) for pair in pairs]
        return [self._masked_elbo(*pair) for pair in pairs]

    def _causal(self, pairs, reverse: bool) -> list[Scored]:
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = [self._fit(ctx, cont) for ctx, cont in pairs[start:start + self.batch_size]]
            tokens_BL = np.full((self.batch_size, self.window), self.ids.pad, np.int32)
            for b, (seq, _) in enumerate(chunk):
                # r2l: the text reversed, so the window's slots read it right to left
                tokens_BL[b, :len(seq)] = seq[::-1] if reverse else seq
            logp_BLV = np.asarray(jax.nn.log_softmax(self._logits(self.params, jnp.asarray(tokens_BL)), -1))
            for b, (seq, cont_start) in enumerate(chunk):
                n_cont = len(seq) - cont_start
                # r2l: the joint (every slot); its continuation is the first n_cont slots read
                slots = np.arange(len(seq)) if reverse else np.arange(cont_start, len(seq))
                cont_slots = np.arange(n_cont) if reverse else slots
                targets = tokens_BL[b, slots]
                greedy = logp_BLV[b, cont_slots].argmax(-1) == tokens_BL[b, cont_slots]
                out.append(Scored(float(logp_BLV[b, slots, targets].sum()), bool(greedy.all())))
        return out

    def _masked_chain(self, ctx, cont) -> Scored:
        """Reveal the continuation left to right, the context visible, MASK after the text."""
        seq, cont_start = self._fit(ctx, cont)
        tokens_1L = np.full((1, self.window), self.ids.mask, np.int32)
        tokens_1L[0, :cont_start] = seq[:cont_start]
        total, greedy = 0.0, True
        for i in range(cont_start, len(seq)):
            logp_V = np.asarray(self._logits(self.params, jnp.asarray(tokens_1L))[0, i])
            total += float(logp_V[seq[i]])
            greedy &= bool(logp_V.argmax() == seq[i])
            tokens_1L[0, i] = seq[i]
        return Scored(total, greedy)

    def _masked_elbo(self, ctx, cont) -> Scored:
        """-ELBO of the continuation: t ~ U(eps, 1), each continuation token masked w.p. t, weight 1/t."""
        seq, cont_start = self._fit(ctx, cont)
        n = len(seq) - cont_start
        clean_L = np.full(self.window, self.ids.mask, np.int32)
        clean_L[:len(seq)] = seq
        self.key, key = jax.random.split(self.key)
        S, eps = self.elbo_samples, self.cfg.objective.mdm_eps
        # stratified times, as mdm's antithetic sampling: one uniform shifted by s/S
        t_S = eps + (1 - eps) * ((np.arange(S) / S + float(jax.random.uniform(key, ()))) % 1.0)
        u_SN = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (S, n)))
        masked_SN = u_SN < t_S[:, None]
        tokens_SL = np.tile(clean_L, (S, 1))
        tokens_SL[:, cont_start:len(seq)] = np.where(masked_SN, self.ids.mask, seq[cont_start:])
        logp_SLV = np.asarray(self._logits(self.params, jnp.asarray(tokens_SL)))
        target_N = np.asarray(seq[cont_start:])
        logp_SN = logp_SLV[:, cont_start:len(seq)][np.arange(S)[:, None], np.arange(n)[None, :], target_N]
        elbo = float(np.mean((np.where(masked_SN, logp_SN, 0.0)).sum(1) / t_S))
        all_masked_1L = clean_L.copy()[None]
        all_masked_1L[0, cont_start:len(seq)] = self.ids.mask
        argmax_N = np.asarray(self._logits(self.params, jnp.asarray(all_masked_1L)))[0, cont_start:len(seq)]
        return Scored(elbo, bool((argmax_N.argmax(-1) == target_N).all()))

    def rolling(self, ids: Sequence[int]) -> float:
        """log p(text): the sum over disjoint windows of the text, each scored without context."""
        chunks = [list(ids[i:i + self.window]) for i in range(0, len(ids), self.window)]
        return float(sum(s.logprob for s in self.loglikelihood([([], c) for c in chunks if c])))

    def generate(self, ctx: Sequence[int], max_new: int, until: Sequence[str] = ()) -> str:
        """Greedy continuation (temperature 0, the family's default sampler), cut at the first `until`."""
        limit = self.cfg.model.max_len if self.objective.sampling == "ar" else self.window
        max_new = min(max_new, limit - 1)
        ctx = list(ctx)[-(limit - max_new):] if limit - max_new > 0 else []
        if self.objective.reading_order == "r2l":
            raise ConfigError("r2l runs generate right to left: they cannot continue a context")
        row = np.asarray(ctx + [self.ids.mask] * max_new, np.int32)[None]
        chosen = sampling.resolve(self.cfg, None)
        given = {"temperature": 0.0}
        if "steps" in chosen.options:
            given["steps"] = max_new
        out = jax.device_get(sampling.sample(self.params, self.cfg, row, self.key, chosen,
                                             sampling.make_options(chosen, given)))
        new = [int(t) for t in np.asarray(out["tokens"][0])[len(ctx):]]
        text = self.tokenizer.decode(np.asarray([t for t in new if t < self.ids.pad], np.int32))
        for stop in until:
            if stop and stop in text:
                text = text[:text.index(stop)]
        return text
