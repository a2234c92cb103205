"""Data-iterator state across process counts (resuming a checkpoint with more or fewer processes).

``grain.checkpoint.CheckpointSave`` writes one ``process_<i>-of-<n>.json`` per process and
``CheckpointRestore`` reads only the file of the restoring process's own ``(i, n)``, so a checkpoint
written by 1 process cannot be restored by 2 as it is (process 1 finds no ``process_1-of-2.json``).

jaxorder's train iterators (in-memory and prepared, any ``data.num_workers``) have the state
``{"next_index": step}``, the same in every process and for every process count: element i of
every process is step i's global batch, of which process p takes rows [p*B/P, (p+1)*B/P). So a
state saved by M processes is valid for N processes: ``load_iterator_state`` returns the file of
this process if it exists, else the state all saved processes agree on. A state that is not of
that form, or differs between processes, cannot be re-sliced: DataError naming the process counts.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from etils import epath

from jaxorder.data.errors import DataError

_FILE = re.compile(r"^process_(\d+)-of-(\d+)\.json$")


def load_iterator_state(directory: str | os.PathLike, process_index: int,
                        process_count: int) -> dict[str, Any]:
    """The iterator state for process ``process_index`` of ``process_count`` from a grain
    checkpoint directory (the ``data`` item of a checkpoint step)."""
    directory = epath.Path(directory)
    own = directory / f"process_{process_index}-of-{process_count}.json"
    if own.is_file():
        return json.loads(own.read_text())
    files = (sorted(p for p in directory.glob("process_*-of-*.json") if _FILE.match(p.name))
             if directory.is_dir() else [])
    if not files:
        raise DataError(f"{directory} holds no data-iterator state (process_*-of-*.json); the "
                        f"checkpoint is incomplete")
    saved_counts = {int(_FILE.match(p.name).group(2)) for p in files}
    saved = f"{'/'.join(map(str, sorted(saved_counts)))} process(es)"
    try:
        states = [json.loads(p.read_text()) for p in files]
    except (OSError, ValueError):
        raise DataError(f"the data-iterator state in {directory} is unreadable; the "
                        f"checkpoint is damaged") from None
    if len(saved_counts) == 1:
        m = saved_counts.pop()
        have = {int(_FILE.match(p.name).group(1)) for p in files}
        if have != set(range(m)):
            raise DataError(f"the data-iterator state in {directory} lacks files of some of its {m} "
                            f"processes; the checkpoint is incomplete")
    first = states[0]
    if not (isinstance(first, dict) and set(first) == {"next_index"} and all(s == first for s in states)):
        raise DataError(f"the data-iterator state in {directory} was saved by {saved} and is "
                        f"process-specific; resuming it with {process_count} process(es) is not "
                        f"supported: resume with {saved}")
    return dict(first)


def restore_iterator(iterator: Any, directory: str | os.PathLike, process_index: int,
                     process_count: int) -> Any:
    """``iterator.set_state`` with ``load_iterator_state``; returns the iterator."""
    iterator.set_state(load_iterator_state(directory, process_index, process_count))
    return iterator
