"""DataBundle: the grain side of the data - shuffle, batch and shard packed windows for training,
fixed validation batches - over in-memory windows (``pipeline.make_data``) or a prepared dataset's
records (``prepared.make_prepared_data``).

Training: each epoch visits the windows in a fresh order (grain's index shuffle, seeded from
``data.seed`` and the epoch), grouped into global batches of ``batch_size`` windows (a final partial
batch of an epoch is dropped, so batches never mix epochs). Process ``p`` of ``P`` yields rows
``[p*B/P, (p+1)*B/P)`` of every global batch, so concatenating all processes' batches in process
order gives the single-process batch. The iterator is a plain grain ``DatasetIterator``: its
state is ``{"next_index": step}``, saved with ``grain.checkpoint.CheckpointSave``.

Validation: no shuffling; ``val_batches(n)`` takes up to ``n`` global batches of windows spread
evenly over the validation stream.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import grain
import numpy as np
from absl import flags

from jaxorder.data.errors import DataError


def _shuffle_seed(seed: int) -> int:
    # grain shuffles epoch e with (seed + e): hash the run seed so that seed s, epoch 1 does not
    # replay seed s+1, epoch 0.
    return int(np.random.SeedSequence(int(seed) % 2**63).generate_state(1, np.uint32)[0])


class _TakeRows(grain.transforms.Map):
    """Global batch of window indices -> this process's rows of token windows (``windows`` is an
    array or any object whose ``[int array]`` gives those rows, e.g. prepared ArrayRecord windows)."""

    def __init__(self, windows: np.ndarray, lo: int, hi: int):
        self._windows, self._lo, self._hi = windows, lo, hi

    def map(self, element: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(element)[self._lo:self._hi]
        return {"tokens": self._windows[idx].astype(np.int32)}


class StepIterator(grain.DatasetIterator):
    """Iterator over an infinite MapDataset whose element i is step i, read ahead by
    ``num_workers`` grain worker processes (``mp_prefetch``; worker w reads steps w, w+N, ...).

    Its state is the step, ``{"next_index": i}`` - the same as a plain in-process grain iterator
    and independent of the worker and process counts - so a checkpoint restores exactly with any
    ``num_workers``. ``set_state`` stops the workers; they restart at that step on the next
    ``next``. Call ``close`` to stop them (also done on garbage collection).
    """

    def __init__(self, dataset: grain.MapDataset, num_workers: int, per_worker_buffer_size: int = 2):
        super().__init__()
        self._dataset, self._num_workers = dataset, int(num_workers)
        self._buffer = int(per_worker_buffer_size)
        self._next_index = 0
        self._it: Any = None

    def _start(self) -> None:
        _mark_flags_parsed()
        ds = self._dataset[self._next_index:] if self._next_index else self._dataset
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(num_workers=self._num_workers,
                                                         per_worker_buffer_size=self._buffer))
        self._it = iter(ds)

    def __next__(self) -> Any:
        if self._closed:
            raise ValueError(f"Trying to advance a closed iterator: '{self}'.")
        if self._it is None:
            self._start()
        element = next(self._it)
        self._next_index += 1
        return element

    def get_state(self) -> dict[str, Any]:
        return {"next_index": self._next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self._closed = False
        self._next_index = int(state["next_index"])

    def start_prefetch(self) -> None:
        if self._it is None:
            self._start()

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None:
            it.close()
        self._closed = True

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the iterator may be half torn down
            self.close()

    def __str__(self) -> str:
        return f"StepIterator(num_workers={self._num_workers}, next_index={self._next_index})"


def _mark_flags_parsed() -> None:
    """grain reads absl flags; outside an absl app (the jaxorder CLI, pytest) they are unparsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclass
class DataBundle:
    """Everything the training loop needs from the data side.

    ``info["entropy_floor_bits_per_byte"]`` is the exact entropy rate of the source when it is
    known (``data.source=markov``: each symbol is one byte), else None. A window's first token
    has the larger stationary entropy H(pi) >= H (and the rare document boundaries add EOS
    tokens), so the best achievable validation bits/byte exceeds H by about (H(pi) - H) / seq_len;
    it is reported as the floor anyway. swap05 keeps it (a permutation of positions within a window
    does not change the window's joint entropy).
    """

    tokenizer: Any  # ByteTokenizer or BPETokenizer (same interface)
    info: dict[str, Any]
    val_bytes_per_token: float
    seq_len: int
    global_batch_size: int
    local_batch_size: int
    process_index: int
    process_count: int
    seed: int
    train_windows: np.ndarray = field(repr=False)  # [n_train_windows, seq_len] view of the stream
    val_windows: np.ndarray = field(repr=False)  # [n_val_windows, seq_len]
    num_workers: int = 0  # grain worker processes of train_iterator (0 = in-process)

    def train_dataset(self) -> grain.MapDataset:
        """Infinite MapDataset of ``{"tokens": int32 [B_local, L]}``; element i is step i."""
        lo = self.process_index * self.local_batch_size
        return (grain.MapDataset.range(len(self.train_windows))
                .shuffle(_shuffle_seed(self.seed))
                .batch(self.global_batch_size, drop_remainder=True)
                .repeat()
                .map(_TakeRows(self.train_windows, lo, lo + self.local_batch_size)))

    def train_iterator(self) -> grain.DatasetIterator:
        """A fresh grain iterator from step 0 (restore a step with ``set_state`` or
        ``grain.checkpoint.CheckpointRestore``). Its state is ``{"next_index": step}`` whatever
        ``num_workers`` is. In-process with no prefetch threads when ``num_workers == 0``; else
        ``num_workers`` grain worker processes read the batches ahead (``StepIterator``)."""
        if self.num_workers > 0:
            return StepIterator(self.train_dataset(), self.num_workers)
        ds = self.train_dataset().to_iter_dataset(
            grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        return iter(ds)

    def val_batches(self, num_batches: int, shifted: bool = False) -> list[np.ndarray]:
        """Up to ``num_batches`` fixed batches int32 [B_local, L] spread evenly over the
        validation stream; always the same windows for the same arguments. ``shifted`` takes the
        windows halfway between those (none in common when the split holds twice as many windows):
        a selection set apart from the reported one.

        With fewer windows than one global batch, returns one smaller batch with every window
        (rounded down to a multiple of the process count).
        """
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        n = len(self.val_windows)
        B, P = self.global_batch_size, self.process_count
        if n >= B:
            nb = min(num_batches, n // B)
            rows = nb * B
            batch = B
        else:
            rows = batch = (n // P) * P
            if rows == 0:
                raise DataError(too_little_val(self.info["val_tokens"], n, self.seq_len, P))
        idx = ((2 * np.arange(rows, dtype=np.int64) + shifted) * n) // (2 * rows)  # evenly spread, increasing
        local = batch // P
        lo = self.process_index * local
        out = []
        for b in range(rows // batch):
            sel = idx[b * batch:(b + 1) * batch][lo:lo + local]
            out.append(self.val_windows[sel].astype(np.int32))
        return out


def too_little_val(tokens: int, windows: int, seq_len: int, processes: int) -> str:
    """The DataError message for fewer validation windows than processes."""
    need = f"{processes} windows (one per process)" if processes > 1 else "one window"
    return (f"the validation text has {tokens} tokens = {windows} windows of data.seq_len={seq_len}, "
            f"fewer than {need}; lower data.seq_len, raise data.val_fraction or add text")
