"""The golden weight-fill rule of ../shared/reference/golden/README.md, from a manifest alone."""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"


def load_manifest(name: str) -> dict:
    return json.loads((DATA / "manifests" / f"{name}.json").read_text())


def swin_index(window: int) -> torch.Tensor:
    # Written independently of poster.models.poster_v2 so the test checks the model's buffer.
    n = window * window
    out = torch.empty(n, n, dtype=torch.int64)
    for p in range(n):
        r, c = divmod(p, window)
        for q in range(n):
            r2, c2 = divmod(q, window)
            out[p, q] = (r - r2 + window - 1) * (2 * window - 1) + (c - c2 + window - 1)
    return out


def fill_state_dict(manifest: dict, seed: int) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for e in manifest["entries"]:
        key, shape, leaf = e["key"], tuple(e["shape"]), e["key"].rsplit(".", 1)[-1]
        if e["dtype"] == "int64":
            if leaf == "num_batches_tracked":
                sd[key] = torch.tensor(0, dtype=torch.int64)
            elif leaf == "relative_position_index":
                sd[key] = swin_index(int(round(math.sqrt(shape[0]))))
            else:
                raise AssertionError(f"unexpected int64 entry {key}")
            continue
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if leaf == "running_var":
            v = 1.0 + 0.5 * x.abs()
        elif leaf in ("running_mean", "bias"):
            v = 0.1 * x
        elif e["module"] == "PReLU":
            v = 0.25 + 0.05 * x
        elif leaf == "weight" and len(shape) == 1:
            v = 1.0 + 0.1 * x
        elif leaf == "weight":
            gain = 6.0 if key.endswith("head.linear.weight") else 1.0
            v = x * (gain / math.sqrt(math.prod(shape[1:])))
        elif leaf.startswith("gamma"):
            v = 1.0 + 0.1 * x
        else:
            v = 0.5 * x
        sd[key] = v
    return sd


def weights_sha256(sd) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode("utf-8"))
        h.update(b"\0")
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()
