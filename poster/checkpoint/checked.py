"""Checked loading: a state dict goes into a model only when every key and shape fits and every weight is finite.

The original code loaded non-strictly and silently (a wrong ``--modeltype`` gave a half random
model).  Here every missing, unexpected or mis-shaped key is an error that lists them, and the
backbone files POSTER is initialised from (IR-50, the 68-point MobileFaceNet) are loaded the same way,
into the backbones the model's family record names.  The download code (``hub.py``) checks a fetched
file with it; ``loading.py`` comes after both.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import family_of
from .formats import read_weight_file

log = logging.getLogger(__name__)

_V2_STAGE_OF_UNIT = [("body1", 3), ("body2", 4), ("body3", 14)]


def _mismatch_report(missing, unexpected, shapes, limit: int = 12) -> str:
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            parts.append(f"{len(items)} {title}: {shown}")
    return "; ".join(parts)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "",
                            allow_missing: tuple[str, ...] = ("relative_position_index",)) -> None:
    """Strict load that lists every missing/unexpected/mis-shaped key in one error.

    ``relative_position_index`` buffers may be absent (they are a pure function of the window
    size and are regenerated), but when present they must equal the regenerated value.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(allow_missing)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source}: weights do not fit {type(model).__name__}: "
                              + _mismatch_report(missing, unexpected, shapes))
    refuse_non_finite(state_dict, source)
    for k in own:
        if k.endswith("relative_position_index") and k in state_dict and not torch.equal(state_dict[k].cpu(), own[k].cpu()):
            raise CheckpointError(f"{source}: {k} differs from the standard relative-position index")
    model.load_state_dict({k: v for k, v in state_dict.items()}, strict=False)


def refuse_non_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """A NaN or infinite weight makes every prediction NaN: refuse the file, saying how many."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state_dict.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        worst = ", ".join(f"{k} ({n})" for k, n in sorted(bad.items(), key=lambda kv: -kv[1])[:5])
        raise CheckpointError(f"{source}: {sum(bad.values())} weights are NaN or infinite, in {len(bad)} "
                              f"tensor(s): {worst}")


def remap_ir50_for_v2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``body.0-2/3-6/7-20`` -> ``body1.0-2/body2.0-3/body3.0-13`` (docs/faithfulness.md#ir-50-trunk)."""
    offsets, start = {}, 0
    for stage, count in _V2_STAGE_OF_UNIT:
        for j in range(count):
            offsets[start + j] = (stage, j)
        start += count
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"body\.(\d+)\.(.*)", k)
        if m and int(m.group(1)) in offsets:
            stage, j = offsets[int(m.group(1))]
            out[f"{stage}.{j}.{m.group(2)}"] = v
        else:
            out[k] = v
    return out


def load_backbone_state(backbone: nn.Module, kind: str, state_dict: Mapping[str, torch.Tensor],
                        source: str) -> dict[str, Any]:
    """Load a backbone file's weights into the backbone module of its ``kind``; what was loaded.

    ``ir50``: a face.evoLVe IR-50 state dict; entries POSTER does not have (the 4th stage
    ``body.21-23``) are dropped and reported, ``body.N`` is renamed for a split (V2) trunk.
    ``landmark``: the 68-point MobileFaceNet, loaded strictly.
    """
    if kind != "ir50":
        load_state_dict_checked(backbone, state_dict, source)
        return {"loaded": len(state_dict)}
    sd = dict(state_dict)
    if getattr(backbone, "split_stages", False) and any(k.startswith("body.") for k in sd):
        sd = remap_ir50_for_v2(sd)
    own = backbone.state_dict()
    dropped = sorted(k for k in sd if k not in own)
    kept = {k: v for k, v in sd.items() if k in own}
    load_state_dict_checked(backbone, kept, source)
    if dropped:
        log.info("%s: dropped %d entries POSTER does not use (%s...)", source, len(dropped), dropped[:3])
    return {"loaded": len(kept), "dropped": dropped}


def load_backbone_weights(model: nn.Module, ir50: str | os.PathLike | None = None,
                          landmark: str | os.PathLike | None = None) -> dict[str, Any]:
    """Initialise a fresh POSTER model's backbones from the official pretrained files.

    ``ir50``: a face.evoLVe IR-50 state dict; ``landmark``: ``mobilefacenet_model_best.pth.tar``
    (``{'state_dict': ...}``); each goes into the backbone the model's family record names.
    Returns a report ``{'ir50': {'loaded': n, 'dropped': [...]}, 'landmark': {'loaded': n}}``.
    """
    family = family_of(model)
    report: dict[str, Any] = {}
    for kind, path in (("ir50", ir50), ("landmark", landmark)):
        if path is None:
            continue
        attribute = family.backbones.get(kind) if family is not None else None
        if attribute is None:
            raise CheckpointError(f"{path}: {type(model).__name__} has no {kind} backbone to initialise")
        state_dict = read_weight_file(path).state_dict
        report[kind] = load_backbone_state(getattr(model, attribute), kind, state_dict, str(path))
    return report
