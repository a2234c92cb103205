"""End of text: everything a sampler generates after its first EOS is padding (EOS), the convention
of ``data.eos`` windows (a document, EOS, EOS up to the end; docs/data.md).

One rule for every sampler, in reading order: let p be the first *generated* position (a MASK of
the input) holding EOS; every generated position after p holds EOS. Fixed tokens (prompt, template)
never change, and an EOS among them ends nothing. The masked and block samplers apply it to their
loop state after every step (``commit_after_eos``: the still-masked positions after p are committed
as EOS at once, the LLaDA / Fast-dLLM convention, so a block's loop ends when nothing is left and
later blocks cost no forward pass); the AR samplers stop a row at its EOS (generation order) and
fill the rest; the any-order samplers fill their output (``fill_after_eos``). ``ignore_eos``
(``--ignore-eos``) turns all of it off: the full length is generated and EOS is a token like any
other. Filled positions are not drawn from the model: they add nothing to ``logprob`` or
``uncertainty``.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxorder.config import Config
from jaxorder.objectives.common import special_ids
from jaxorder.sampling.base import SamplerOptions


def eos_id(cfg: Config, options: SamplerOptions) -> int | None:
    """The EOS id the samplers stop at, or None with ``ignore_eos``."""
    return None if options.ignore_eos else special_ids(cfg.model).eos


def after_eos(x_BL: jnp.ndarray, generated_BL: jnp.ndarray, eos: int) -> jnp.ndarray:
    """bool [B, L]: the generated positions strictly after the first generated EOS of each row."""
    is_eos_BL = generated_BL & (x_BL == eos)
    return generated_BL & ((jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0)


def fill_after_eos(x_BL: jnp.ndarray, generated_BL: jnp.ndarray, eos: int | None) -> jnp.ndarray:
    """``x_BL`` with EOS at the generated positions after the first generated EOS (None: unchanged)."""
    if eos is None:
        return x_BL
    return jnp.where(after_eos(x_BL, generated_BL, eos), eos, x_BL)


def commit_after_eos(st: dict, eos: int | None) -> dict:
    """The masked loop state (``mdm_steps.initial_state``) after the step just taken, with every
    generated position after the first committed EOS set to EOS; the still-masked ones among them
    are committed at that step (``committed_at``, ``commits``) and counted in ``eos_filled`` [B].

    A text token committed after that EOS (in the same step or earlier) is overwritten by the
    padding; its log-prob stays in ``logprob`` (it was drawn), except in a remasking run, whose
    ``logprob`` is of the final tokens (``lp_at``, ``jaxorder.sampling.remask``): there the
    overwritten token's log-prob and entropy are taken out and it becomes padding like a filled
    position (``lp_at`` = +inf). A pass the loop kept for its next step (info-gain's look-ahead,
    ``fresh``; ancestral's, ``dirty``) is of the sequence before the fill, so a fill that changed the
    sequence discards it."""
    if eos is None:
        return st
    committed_BL = (st["committed_at"] >= 0) & ~st["masked"]
    generated_BL = committed_BL | st["masked"]
    is_eos_BL = committed_BL & (st["x"] == eos)
    after_BL = generated_BL & ((jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0)
    fill_BL = after_BL & st["masked"]
    changed = jnp.any(after_BL & (st["x"] != eos))
    i = st["step"] - 1  # the step just taken
    out = dict(st, x=jnp.where(after_BL, eos, st["x"]), masked=st["masked"] & ~after_BL,
               committed_at=jnp.where(fill_BL, i, st["committed_at"]),
               commits=st["commits"].at[i].add(fill_BL.sum(axis=1).astype(jnp.int32)),
               eos_filled=st["eos_filled"] + fill_BL.sum(axis=1).astype(jnp.int32))
    if "lp_at" in st:  # remasking: the overwritten tokens leave logprob and become padding
        drop_BL = after_BL & committed_BL & jnp.isfinite(st["lp_at"])
        out.update(logprob=st["logprob"] - jnp.sum(jnp.where(drop_BL, st["lp_at"], 0.0), axis=1),
                   uncertainty=st["uncertainty"] - jnp.sum(jnp.where(drop_BL, st["ent_at"], 0.0), axis=1),
                   lp_at=jnp.where(after_BL, jnp.inf, st["lp_at"]),
                   ent_at=jnp.where(after_BL, 0.0, st["ent_at"]))
    if "fresh" in st:
        out["fresh"] = st["fresh"] & ~changed
    if "dirty" in st:
        out["dirty"] = st["dirty"] | changed
    return out


def release_padding(st: dict, eos: int | None, mask_id: int) -> dict:
    """A remasking run's state (``jaxorder.sampling.remask``) after its remask: when the EOS that
    ended the text went back to MASK, the padding after it (EOS never drawn, ``lp_at`` = +inf; see
    ``commit_after_eos``) goes back to MASK too, so the end of the text is decided again instead of
    being kept by padding that no drawn EOS justifies any more. ``eos_filled`` keeps counting fills
    (a position filled, released and filled again counts twice)."""
    if eos is None:
        return st
    committed_BL = st["committed_at"] >= 0
    padding_BL = committed_BL & (st["x"] == eos) & ~jnp.isfinite(st["lp_at"])
    drawn_BL = committed_BL & (st["x"] == eos) & jnp.isfinite(st["lp_at"])
    back_BL = padding_BL & ((jnp.cumsum(drawn_BL, axis=1) - drawn_BL) == 0)  # no drawn EOS before it
    return dict(st, x=jnp.where(back_BL, mask_id, st["x"]), masked=st["masked"] | back_BL,
                committed_at=jnp.where(back_BL, -1, st["committed_at"]))


def ar_rows(seq_BL: jnp.ndarray, written_B: jnp.ndarray, end_B: jnp.ndarray, stopped_B: jnp.ndarray,
            eos: int, pad: int) -> jnp.ndarray:
    """An AR buffer's rows in generation order [B, L]: slots < ``written_B`` as written (prompt and
    generated tokens, the EOS included), a row that stopped at EOS holds EOS in its unwritten slots
    up to ``end_B`` (its padding), and PAD elsewhere (slots the input had as PAD)."""
    slot_L = jnp.arange(seq_BL.shape[1])
    padding_BL = stopped_B[:, None] & (slot_L[None, :] < end_B[:, None])
    return jnp.where(slot_L[None, :] < written_B[:, None], seq_BL, jnp.where(padding_BL, eos, pad))
