"""Test-only DataModules that misbehave on purpose (importable by class_path from configs)."""



from cnf.data.toy import ToyDataModule


class NaNAfterFirstEpoch(ToyDataModule):
    """Clean data in epoch 0, then a NaN row in every batch.
    (Use with ``resample_every_epoch: true`` so Lightning asks for a new loader each epoch.)"""

    def train_dataloader(self):
        if self.trainer is not None and self.trainer.current_epoch >= 1:
            bad = self.make_split("train").clone()
            bad[:: self.batch_size // 2, 0] = float("nan")
            self.train_set = bad
            return super(ToyDataModule, self).train_dataloader()
        return super().train_dataloader()


class NaNFromStart(ToyDataModule):
    """A NaN row in every training batch from the first step: fit fails before any checkpoint."""

    def train_dataloader(self):
        bad = self.make_split("train").clone()
        bad[:: self.batch_size // 2, 0] = float("nan")
        self.train_set = bad
        return super().train_dataloader()
