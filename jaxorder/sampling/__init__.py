"""Sampling from trained runs, one module per family, each a jitted loop with a plain reference path:
AR (l2r/r2l) with a KV cache (``ar``), masked-diffusion samplers (``mdm``), block diffusion block
by block with a KV cache over finished blocks (``bd3``), any-order AR in a chosen or greedy order
with a KV cache over the permuted prefix (``any_order``, for ao_ar and latent_order runs), Gumbel
noise with float64-accurate tails (``noise``), prompts and infilling templates (``prompts``),
sample-quality measures (``quality``) and the glue of ``jaxorder sample`` (``cli``).
"""
from __future__ import annotations
