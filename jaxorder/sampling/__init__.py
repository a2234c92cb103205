"""Sampling from trained runs: AR (l2r/r2l) with a KV cache (``jaxorder.sampling.ar``),
masked-diffusion samplers (``jaxorder.sampling.mdm``), Gumbel
noise with float64-accurate tails (``noise``), prompts and infilling templates (``prompts``),
sample-quality measures (``quality``) and the glue of ``jaxorder sample`` (``cli``).

bd3 and ao_ar/latent_order samplers are not written yet.
"""
from __future__ import annotations
