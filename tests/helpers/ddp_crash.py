"""A torchrun entry point whose rank 1 dies after epoch 2, to test that the job stops instead of hanging."""

import os
import sys

from plantlib.config import RunConfig
from plantlib.training.trainer import Trainer


def die_on_rank_1_after_epoch_2(trainer: Trainer, record: dict) -> None:
    if record["epoch"] == 2 and trainer.parts.dist.rank == 1:
        os._exit(3)


if __name__ == "__main__":
    Trainer.build(RunConfig.from_json(sys.argv[1]), callbacks=[die_on_rank_1_after_epoch_2], show_progress=False).fit()
