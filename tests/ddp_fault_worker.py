"""A ``torchrun`` entry point: ``poster train`` whose rank 1 is killed (SIGKILL, as ``kill -9``) at the
second step of epoch 2, to test what a dying rank does to a multi-process run (issue 6).

The second step is chosen on purpose: rank 1 reaches it only after the first step's all-reduce,
i.e. after rank 0 has finished writing the epoch-1 checkpoint, so the fault is deterministic."""

from __future__ import annotations

import os
import signal
import sys

from poster.cli import main
from poster.train.trainer import Trainer

_plain_step = Trainer.train_step
_steps_in_epoch_2 = 0


def _dying_step(self, x, y):
    global _steps_in_epoch_2
    if self.dist.rank == 1 and self.sampler.epoch == 1:
        _steps_in_epoch_2 += 1
        if _steps_in_epoch_2 == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return _plain_step(self, x, y)


Trainer.train_step = _dying_step

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
