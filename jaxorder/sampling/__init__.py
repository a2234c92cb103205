"""Sampling from trained runs: masked-diffusion samplers (``jaxorder.sampling.mdm``), Gumbel
noise with float64-accurate tails (``noise``), prompts and infilling templates (``prompts``),
sample-quality measures (``quality``) and the glue of ``jaxorder sample`` (``cli``).

AR (l2r/r2l with a KV cache), bd3 and ao_ar/latent_order samplers are not written yet.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:  # pallas_kernels sits next to jaxorder; an editable install made before it existed misses it
    import pallas_kernels  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - depends on how the package was installed
    _root = Path(__file__).resolve().parents[2]
    if (_root / "pallas_kernels" / "__init__.py").is_file():
        sys.path.append(str(_root))
    import pallas_kernels  # noqa: F401
