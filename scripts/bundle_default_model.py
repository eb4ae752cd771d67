"""Turn a `poster train` run into the model shipped inside the package.

    python scripts/bundle_default_model.py runs/fer_default/best.pth

Writes ``poster/assets/poster_v1_tiny_fer2013.pth``: the run's weights in float16 (half the size;
they load back into the float32 model), metadata marking the model as trained on grey faces
(``input.grayscale``) and where it came from, and the run's recipe and per-epoch history.  The
optimizer state is left out.  Evaluate the written file (``poster test -c poster_v1_tiny.fer2013``)
for the numbers in docs/results.md: they must be measured on the float16-rounded weights.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from poster.checkpoint.formats import read_weight_file, save_checkpoint
from poster.checkpoint.loading import load_model
from poster.checkpoint.releases import BUNDLED_MODEL


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_checkpoint", help="best.pth of the training run")
    p.add_argument("--out", default=str(BUNDLED_MODEL))
    p.add_argument("--source", default="poster train --recipe fer2013_default on FER2013 Training "
                                       "(10% held out for selection), docs/results.md")
    args = p.parse_args()

    model = load_model(args.run_checkpoint)
    meta = dataclasses.replace(model.meta, input=dataclasses.replace(model.meta.input, grayscale=True),
                               source=args.source, dataset="fer2013")
    training = read_weight_file(args.run_checkpoint).info.get("training") or {}
    provenance = {"recipe": training.get("recipe", {}), "history": training.get("history", []),
                  "best": training.get("best", {})}
    out = save_checkpoint(args.out, model, meta, dtype=torch.float16, provenance=provenance)
    print(f"wrote {out} ({Path(out).stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
