"""Samplers, registered by family (see `base` for the contract and the one lifecycle):

- ``ar``: KV-cache decoding of l2r / r2l runs in their reading order;
- ``ar_speculative``: sampler ``speculative`` of l2r / r2l runs: a smaller draft run (a companion run
  the caller loads) proposes ``draft_length`` tokens, the target verifies them in one cached call;
  exactly the target's sampling distribution;
- ``mdm``: masked-diffusion rules (ancestral, confidence, margin, entropy, threshold, factor), Prophet
  early commit, approximate KV caches (prefix, dual, free, chunked; ``mdm_cached``), the remasking
  corrector (``remask``), optionally in semi-autoregressive blocks and with the fused Pallas step;
- ``guided``: AR-guided unmasking of mdm runs (sampler ``guided``): a small l2r run (the guide, a
  companion run) accepts the longest run of the mdm's proposals, in reading order from the first
  open position, whose guide probability is >= ``guide_threshold``, at least one per step;
- ``info_gain``: the Info-Gain sampler of mdm and bd3 runs (``info-gain``): C candidate commits per
  step, each scored by the entropy it commits plus the mean entropy left after it, from one batched
  look-ahead pass; the cheapest is committed (its bd3 loop is in ``bd3``);
- ``ilm``: sampler ``insert`` of ilm runs: one token per pass inserted into an open gap (a masked
  span of the input, of no fixed length) until the model's stop or the length cap;
- ``bd3``: block diffusion block by block with a KV cache over finished blocks;
- ``any_order``: any-order AR in a chosen (l2r, r2l, random) or greedy order, KV cache over the
  permuted prefix;
- ``any_order_speculative``: any-subset speculative decoding of any-order runs in a random order
  (sampler ``speculative``): drafts K positions in parallel, verifies them in one causal call, exact;
- ``learned``: sampler ``learned`` of mdm runs: commit where a trained commit filter
  (``commit_filter``: an MLP on the final hidden state and confidence, margin, entropy and progress
  features) says the prediction is final, at least one per step; stop a row when it says all that is
  left is end of text. Its training data are decoding ``traces`` (`jaxorder sample --record-traces`),
  fitted by `jaxorder train-filter` (``jaxorder.evaluation.filter_training``);
- ``learned_order``: samplers of learned_order runs: ``policy`` (exact ancestral sampling of (sigma, x):
  the order policy draws the next position, the token head its token, two KV caches) and the fixed
  any-order rules;
plus Gumbel noise with float64-accurate tails (``noise``) and prompts / infilling templates
(``prompts``). This import list is the table of contents: a new sampler file is added here.
"""
from __future__ import annotations

from jaxorder.sampling import (  # noqa: F401  (registration)
    any_order,
    any_order_speculative,
    ar,
    ar_speculative,
    bd3,
    guided,
    ilm,
    info_gain,
    learned,
    learned_order,
    mdm,
)
from jaxorder.sampling.base import (
                                    OPTION_NAMES,
                                    Companion,
                                    Sampler,
                                    SamplerOptions,
                                    all_samplers,
                                    compile_sample,
                                    for_config,
                                    make_options,
                                    register,
                                    resolve,
                                    run_file_options,
                                    sample,
                                    sampler_names,
)

__all__ = ["OPTION_NAMES", "Companion", "Sampler", "SamplerOptions", "all_samplers", "compile_sample",
           "for_config", "make_options", "register", "resolve", "run_file_options", "sample",
           "sampler_names"]
