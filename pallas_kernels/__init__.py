"""Pallas kernels for jaxorder: fused RoPE flash attention and a fused masked-diffusion
sampling step. Imports nothing from ``jaxorder``. See README.md in this directory."""
from pallas_kernels import noise, reference
from pallas_kernels.attention import rope_attention
from pallas_kernels.masks import (
                                  MaskSpec,
                                  as_mask_spec,
                                  bd3,
                                  bidirectional,
                                  causal,
                                  dense_mask,
                                  tile_live,
                                  tile_skip_fraction,
)
from pallas_kernels.sampling import mdm_sample_step

__all__ = ["rope_attention", "mdm_sample_step", "MaskSpec", "as_mask_spec", "causal", "bidirectional", "bd3",
           "dense_mask", "tile_live", "tile_skip_fraction", "reference", "noise"]
