"""The run folder's checkpoint pair, written as one transaction.

``last.pth`` says which epoch was the best so far; ``best.pth`` must hold exactly that epoch's
weights, whatever crash or full disk interrupts a save. An epoch that improved is committed in
three steps, each atomic on its own:

1. the new best goes to ``best.pending.pth`` (a name nothing trusts yet);
2. ``last.pth`` is written: this is the commit point, from now on the run's best is this epoch;
3. ``best.pending.pth`` is renamed to ``best.pth``.

A crash before 2 leaves the old pair intact (the pending file is deleted on resume: *roll back*);
a crash between 2 and 3 leaves a pending file that ``last.pth`` vouches for (renamed on resume:
*roll forward*). ``check_best`` then proves the pair agrees before anything uses ``best.pth``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from ..checkpoint.formats import WeightFile, read_weight_file
from ..errors import CheckpointError

log = logging.getLogger(__name__)

LAST, BEST, PENDING = "last.pth", "best.pth", "best.pending.pth"


def commit_epoch(out: Path, write: Callable[[Path], Any], is_best: bool) -> None:
    """Write this epoch's checkpoints; ``write(path)`` writes one file atomically."""
    if is_best:
        write(out / PENDING)
    write(out / LAST)
    if is_best:
        os.replace(out / PENDING, out / BEST)


def best_epoch_of(wf: WeightFile) -> Any:
    """The best epoch recorded in a checkpoint's training state (None if it has none)."""
    state = wf.info.get("training")
    best = state.get("best") if isinstance(state, dict) else None
    return best.get("epoch") if isinstance(best, dict) else None


def recover(out: Path, best_epoch: Any) -> None:
    """Finish or undo a save that ``last.pth`` (whose best epoch is ``best_epoch``) was part of."""
    pending = out / PENDING
    if not pending.is_file():
        return
    try:
        vouched = best_epoch is not None and best_epoch_of(read_weight_file(pending)) == best_epoch
    except CheckpointError:
        vouched = False  # a damaged pending file was never committed
    if vouched:
        os.replace(pending, out / BEST)
        log.warning("completed the interrupted save of %s (epoch %s)", out / BEST, best_epoch)
    else:
        pending.unlink()
        log.warning("removed %s: its save was interrupted before %s recorded it", pending, out / LAST)


def check_best(out: Path, best_epoch: Any) -> WeightFile:
    """``best.pth`` read and proven to hold ``best_epoch`` (a ``CheckpointError`` otherwise)."""
    path = out / BEST
    if not path.is_file():
        raise CheckpointError(f"{path} is missing although {out / LAST} records epoch {best_epoch} as the best; "
                              "the run folder was changed by hand")
    wf = read_weight_file(path)
    held = best_epoch_of(wf)
    if held != best_epoch:
        raise CheckpointError(f"{path} holds epoch {held} but {out / LAST} records epoch {best_epoch} as the best; "
                              "the run folder was changed by hand or by another run")
    return wf
