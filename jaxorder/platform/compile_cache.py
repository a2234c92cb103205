"""JAX's persistent compilation cache from `compile.cache_dir`: a restarted or resumed run (or a
second `jaxorder compile`) loads its compiled programs instead of compiling them again.

JAX writes entries from process 0 only, so on a pod the directory must be one that every host
reads: a gs:// path, or a relative one under a gs:// run directory (`../.jax_cache`).
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import jax
from etils import epath
from jax.experimental.compilation_cache import compilation_cache

from jaxorder.config import CompileConfig


def resolve(cache_dir: str, base: Any) -> str:
    """`cache_dir` as used: absolute and gs:// paths as given, a relative one under `base`
    (`..` steps up, also in gs:// paths, which have no `..` of their own)."""
    if "://" in cache_dir or PurePosixPath(cache_dir).is_absolute():
        return cache_dir
    path = epath.Path(base)
    for part in PurePosixPath(cache_dir).parts:
        path = path.parent if part == ".." else path if part == "." else path / part
    return str(path)


def configure(cfg: CompileConfig, base: Any) -> str | None:
    """Points JAX's persistent cache at cfg.cache_dir (resolved under `base`); the path, or None
    when the cache is off. Call before the programs to cache are compiled."""
    if not cfg.cache_dir:
        return None
    path = resolve(cfg.cache_dir, base)
    if jax.config.jax_compilation_cache_dir != path:
        compilation_cache.reset_cache()  # a previous run in this process may have opened another one
        jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.cache_min_seconds)
    # -1 lifts the size floor too, so that cache_min_seconds=0 caches every program
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1 if cfg.cache_min_seconds == 0 else 0)
    return path
