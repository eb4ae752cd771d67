"""Stand-ins for the official files, in the authors' formats, with cheap deterministic values.

Every tensor of a stand-in is filled from one small shared random vector (element ``[..., i, j]``
is ``base[i + j]``), materialised: the safe loader refuses tensors larger than the data the file
holds (a view with overlapping strides), so a stand-in is as large as the real file (a V1-large one
is 284 MB).  Keys, shapes, dtypes and the top-level layout are the official ones (manifests).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch

from golden_fill import load_manifest

# release name -> (manifest, official layout)
RELEASE_MANIFESTS = {
    "poster_v1_large.rafdb": ("poster_v1_rafdb_large_7cls", "v1"),
    "poster_v1_large.affectnet7": ("poster_v1_affectnet_large_7cls", "v1"),
    "poster_v1_large.affectnet8": ("poster_v1_affectnet_large_8cls", "v1"),
    "poster_v2.rafdb": ("poster_v2_7cls", "v2"),
    "poster_v2.affectnet7": ("poster_v2_7cls", "v2"),
    "poster_v2.affectnet8": ("poster_v2_8cls", "v2"),
    "poster_v2.caers": ("poster_v2_7cls", "v2"),
    "ir50": ("ir50_backbone_3stage", "plain"),
    "mobilefacenet68": ("mobilefacenet_136", "landmark"),
}


def shared_state_dict(manifest_name: str, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    entries = load_manifest(manifest_name)["entries"]
    base = torch.randn(65536, generator=torch.Generator().manual_seed(seed)) * 0.05 + 0.5  # positive: BN vars
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for e in entries:
        shape, leaf = tuple(e["shape"]), e["key"].rsplit(".", 1)[-1]
        if e["dtype"] == "int64":
            sd[e["key"]] = (swin_index(int(round(math.sqrt(shape[0])))) if leaf == "relative_position_index"
                            else torch.tensor(0, dtype=torch.int64))
        else:
            sd[e["key"]] = _windowed(base, shape)
    return sd


def swin_index(window: int) -> torch.Tensor:
    """The standard relative-position index, vectorised (golden_fill's loop takes seconds at 28)."""
    r, c = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    r, c = r.flatten(), c.flatten()
    return (r[:, None] - r[None, :] + window - 1) * (2 * window - 1) + (c[:, None] - c[None, :] + window - 1)


def _windowed(base: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if not shape:
        return base[0].clone()
    strides = [0] * (len(shape) - 2) + [1] * min(2, len(shape))
    return base.as_strided(shape, strides).contiguous()


def official_object(state_dict, layout: str) -> dict:
    """The top-level dict the authors' code saved, DataParallel's ``module.`` included
    (docs/faithfulness.md#checkpoints)."""
    prefixed = OrderedDict((f"module.{k}", v) for k, v in state_dict.items())
    if layout == "v1":
        return {"iter": 40, "model_state_dict": prefixed, "optimizer_state_dict": {}}
    if layout == "v2":
        return {"epoch": 120, "state_dict": prefixed, "best_acc": torch.tensor(92.2), "optimizer": {}}
    if layout == "landmark":
        return {"state_dict": state_dict}
    return dict(state_dict)


def write_standin(release_name: str, path: Path, state_dict=None) -> Path:
    manifest, layout = RELEASE_MANIFESTS[release_name]
    sd = state_dict if state_dict is not None else shared_state_dict(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official_object(sd, layout), path)
    return path
