"""A LightningDataModule over in-memory tensors: the base of the toy, tabular and image
modules. Subclasses implement ``make_split(split) -> Tensor``.

Batches are cut from the tensors by one indexing operation per batch
(:class:`BatchedTensorDataset`), with the indices of a batch sliced from one permutation
(:class:`SliceBatchSampler`), not gathered sample by sample and stacked by the default
collation, which cost about as much as a small model's step at batch 512
(experiments/bench/bench_overhead.py). The loaders are ordinary ``DataLoader`` s with the
usual samplers, so shuffling, ``drop_last`` and the distributed sampler Lightning inserts
under DDP behave as before, batch for batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

__all__ = ["TensorDataModule", "BatchedTensorDataset", "SliceBatchSampler", "batched_loader"]


class BatchedTensorDataset(Dataset):
    """Like ``TensorDataset`` (item ``i`` is ``[t[i] for t in tensors]``), but a whole batch
    of indices is fetched with one indexing operation per tensor (``__getitems__``, which
    ``DataLoader`` calls when it batches). Use with :func:`batched_loader`."""

    def __init__(self, *tensors: torch.Tensor):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("BatchedTensorDataset needs tensors of one common length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return [t[index] for t in self.tensors]

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> list[torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return [t[idx] for t in self.tensors]


def _already_batched(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


class SliceBatchSampler(BatchSampler):
    """``BatchSampler`` that yields each batch as an index tensor cut from one permutation
    (``RandomSampler`` without replacement) or range (``SequentialSampler``): the same
    indices, batch for batch and from the same random stream, as ``BatchSampler`` over that
    sampler, without drawing them one Python int at a time. Over any other sampler (e.g. the
    ``DistributedSampler`` Lightning puts in its place under DDP, constructing this class
    with the same arguments) it iterates exactly as ``BatchSampler``."""

    def _order(self) -> torch.Tensor | None:
        s = self.sampler
        if type(s) is SequentialSampler:
            return torch.arange(len(s.data_source))
        if type(s) is RandomSampler and not s.replacement and s.num_samples == len(s.data_source):
            generator = s.generator
            if generator is None:  # as RandomSampler seeds itself from the global RNG
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                generator = torch.Generator()
                generator.manual_seed(seed)
            return torch.randperm(len(s.data_source), generator=generator)
        return None

    def __iter__(self):
        order = self._order()
        if order is None:
            yield from super().__iter__()
            return
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for i in range(0, stop, self.batch_size):
            yield order[i:i + self.batch_size]


def batched_loader(*tensors: torch.Tensor, batch_size: int, shuffle: bool,
                   drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` over in-memory ``tensors`` whose batches are lists ``[x, ...]`` (as
    ``TensorDataset`` with the default collation gives), each cut in one indexing step."""
    dataset = BatchedTensorDataset(*tensors)
    sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_sampler=SliceBatchSampler(sampler, batch_size, drop_last),
                      num_workers=num_workers, collate_fn=_already_batched)


class TensorDataModule(L.LightningDataModule):
    """Serves ``train`` / ``val`` / ``test`` tensors built by :meth:`make_split`.
    Batches are 1-lists ``[x]``; ``x`` is ``[B, *event_shape]``."""

    event_shape: tuple[int, ...] = ()

    def __init__(self, batch_size: int = 512, eval_batch_size: int = 5_000, num_workers: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_set: torch.Tensor | None = None
        self.val_set: torch.Tensor | None = None
        self.test_set: torch.Tensor | None = None

    def make_split(self, split: str) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.make_split("train")
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self.make_split("val")
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.make_split("test")

    def _loader(self, data: torch.Tensor, batch_size: int, shuffle: bool) -> DataLoader:
        return batched_loader(data, batch_size=min(batch_size, len(data)), shuffle=shuffle,
                              drop_last=shuffle and len(data) > batch_size,
                              num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
