"""Paths of files a run reads or writes: local or object storage (gs://...), all through etils.epath.

epath sends `gs://` to fsspec (gcsfs) when TensorFlow is not installed, and to tf.io.gfile when it
is; local paths go to the os module. pathlib must not see a URL: it would turn `gs://b/x` into
the relative path `gs:/b/x`.
"""
from __future__ import annotations

import os
from typing import Any

from etils import epath


def is_url(path: Any) -> bool:
    """True for `scheme://...` (gs://, s3://, ...), False for a local path."""
    return "://" in os.fspath(path) if isinstance(path, os.PathLike) else "://" in str(path)


def as_path(path: Any) -> epath.Path:
    """An epath.Path; `~` is expanded in local paths only (a URL has no home directory)."""
    return epath.Path(path) if is_url(path) else epath.Path(os.path.expanduser(os.fspath(path)))


def absolute(path: str) -> str:
    """`path` made absolute against the working directory; URLs are already absolute."""
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))
