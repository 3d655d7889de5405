"""Deterministic, resumable sampling of fixed-length windows from token shards.

The token stream of each shard is cut into non-overlapping windows of seq_len + 1 tokens (inputs and
shifted targets). Global sample number g maps to window perm_e[g mod n] with e = g div n: every window
is seen once per epoch, in an order fixed by (seed, epoch). Because a batch is a pure function of the
step, resuming needs only the step number, and any split of a step's samples over processes and
micro-batches sees exactly the same data (2 processes x 1 micro-batch == 1 process x 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from chatforge import ChatforgeError


class EpochOrder:
    """Global sample number g -> item perm_e[g mod n], e = g div n: every item once per epoch, in an order
    fixed by (seed, epoch). A pure function of g, so batches depend only on the step."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._perm = -1, None

    def __call__(self, g: int) -> int:
        epoch, j = divmod(g, self.n)
        if not self.shuffle:
            return j
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[j])


class WindowSampler:
    def __init__(self, arrays: list[np.ndarray], seq_len: int, seed: int, shuffle: bool = True):
        self.arrays, self.seq_len, self.seed, self.shuffle = arrays, seq_len, seed, shuffle
        counts = [max(0, (len(a) - 1) // seq_len) for a in arrays]
        self.n = int(sum(counts))
        if self.n == 0:
            total = sum(len(a) for a in arrays)
            raise ChatforgeError(f"the data has {total} tokens, fewer than one window of seq_len+1="
                                 f"{seq_len + 1}; add text or lower seq_len")
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._window = EpochOrder(self.n, seed, shuffle)

    def sample(self, g: int) -> np.ndarray:
        w = self._window(g)
        shard = int(np.searchsorted(self.starts, w, side="right") - 1)
        off = (w - int(self.starts[shard])) * self.seq_len
        return np.asarray(self.arrays[shard][off:off + self.seq_len + 1], dtype=np.int64)

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples first .. first+size-1 as (inputs, targets), each (size, seq_len)."""
        rows = torch.from_numpy(np.stack([self.sample(first + i) for i in range(size)]))
        return rows[:, :-1], rows[:, 1:]


def global_slot(step: int, micro: int, info, grad_accum: int) -> int:
    """The global number of a micro-batch. Processes and micro-batches interleave so that any split of a
    step (2 processes x 1 micro-batch, 1 x 2, ...) covers the same slots, hence the same samples."""
    return step * grad_accum * info.world_size + info.rank * grad_accum + micro


def rank_val_batches(items: list, info, batch_size: int, n_batches: int, make_batch, make_padding) -> list:
    """This process's share of the first `n_batches * batch_size` validation items, in batches. Every process
    gets the same number of batches (FSDP forwards are collective): one that runs out gets
    `make_padding()` batches, which must carry no weight (tokens_in == 0)."""
    total = min(n_batches * batch_size, len(items))
    if total == 0:
        return []
    mine = list(range(info.rank, total, info.world_size))
    per_rank = math.ceil(math.ceil(total / info.world_size) / batch_size)
    chunks = [[items[g] for g in mine[i * batch_size:(i + 1) * batch_size]] for i in range(per_rank)]
    return [make_batch(c) if c else make_padding() for c in chunks]


class GroupTask:
    """What the RM and DPO tasks share: comparison groups drawn in a seeded epoch order, one micro-batch per
    global slot, progress counted in groups, and validation padded with weightless copies of a real batch.
    A subclass sets `train`, `val`, `order` and defines `_batch(groups)` (with "n_groups", "pair_weight")
    and `loss`."""

    def train_batch(self, step, micro, info, batch_size, grad_accum):
        slot = global_slot(step, micro, info, grad_accum)
        return self._batch([self.train[self.order(slot * batch_size + i)] for i in range(batch_size)])

    def tokens_in(self, batch) -> int:
        return int(batch["n_groups"])  # validation averages over prompts, like the loss

    def tokens_processed(self, batch) -> int:
        return batch["x"].numel()

    def val_batches(self, info, batch_size, n_batches):
        def padding():  # the same forward as a real batch, with no weight
            b = self._batch([self.val[0]])
            b["n_groups"].zero_()
            b["pair_weight"].zero_()
            return b

        return rank_val_batches(self.val, info, batch_size, n_batches, self._batch, padding)
