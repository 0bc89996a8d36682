"""A LightningDataModule over in-memory tensors: the base of the toy, tabular and image
modules. Subclasses implement ``make_split(split) -> Tensor``."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TensorDataModule"]


class TensorDataModule(L.LightningDataModule):
    """Serves ``train`` / ``val`` / ``test`` tensors built by :meth:`make_split`.
    Batches are 1-tuples ``(x,)``; ``x`` is ``[B, *event_shape]``."""

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
        return DataLoader(TensorDataset(data), batch_size=min(batch_size, len(data)),
                          shuffle=shuffle, drop_last=shuffle and len(data) > batch_size,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
