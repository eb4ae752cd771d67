"""From a weights file to a ready model: architecture inference, checked loading, metadata.

The original code loaded non-strictly and silently (a wrong ``--modeltype`` gave a half
random model).  Here every missing, unexpected or mis-shaped key is an error that lists them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..data.labels import DATASET_CLASSES
from ..errors import CheckpointError, option
from .hub import resolve_weights
from ..meta import MAX_CLASSES, InputConfig, ModelMeta
from ..models import create_model, list_models
from ..models.poster_v1 import DEPTHS
from .releases import RELEASES
from .checked import load_state_dict_checked
from .formats import WeightFile, read_weight_file

log = logging.getLogger(__name__)

_DEPTH_TO_SIZE = {depth: size for size, depth in DEPTHS.items()}


# ---------------------------------------------------------------------------------------------
# Architecture inference


def infer_architecture(state_dict: Mapping[str, torch.Tensor], path: str = "") -> tuple[str, dict[str, Any]]:
    """(registry name, options) of the POSTER model a prefix-free state dict belongs to."""
    where = f"{path}: " if path else ""
    if "VIT.head.linear.weight" in state_dict:
        return "poster_v2", {"num_classes": int(state_dict["VIT.head.linear.weight"].shape[0])}
    if "head.linear.weight" in state_dict and "pyramid_fuse.pos_embed" in state_dict:
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"pyramid_fuse\.blocks\.(\d+)\.", k))}
        depth = max(blocks) + 1 if blocks else 0
        if depth not in _DEPTH_TO_SIZE:
            raise CheckpointError(f"{where}POSTER V1 weights with {depth} pyramid blocks; "
                                  f"known sizes are {dict(DEPTHS)}")
        token_mixing = "pyramid_fuse.blocks.0.block_l.conv.weight" in state_dict
        return f"poster_v1_{_DEPTH_TO_SIZE[depth]}", {
            "num_classes": int(state_dict["head.linear.weight"].shape[0]), "token_mixing": token_mixing}
    sample = sorted(state_dict)[:5]
    raise CheckpointError(f"{where}cannot tell which POSTER model these weights belong to "
                          f"(no 'head.linear.weight' / 'VIT.head.linear.weight'); first keys: {sample}")


def release_meta(arch: str, options: Mapping[str, Any], dataset: str | None, source: str) -> ModelMeta:
    """Metadata of an official release: class order and channel order by dataset
    (docs/faithfulness.md#channel-order)."""
    num_classes = int(options["num_classes"])
    if dataset is None:
        if arch.startswith("poster_v1"):
            dataset = "rafdb" if options.get("token_mixing", True) else f"affectnet{num_classes}"
        else:
            dataset = "affectnet8" if num_classes == 8 else "rafdb"
            if num_classes == 7:
                log.warning("%s: a 7-class POSTER V2 file may be RAF-DB or AffectNet-7; assuming RAF-DB "
                            "class order (pass dataset='affectnet7' otherwise)", source)
    names = DATASET_CLASSES.get(dataset)
    if names is None or len(names) != num_classes:
        names = tuple(f"class_{i}" for i in range(num_classes))
    # Only the V1 RAF-DB release was fed BGR tensors (its loader kept cv2's order).
    bgr = arch.startswith("poster_v1") and dataset == "rafdb" and options.get("token_mixing", True)
    return ModelMeta(arch=arch, num_classes=num_classes, class_names=names,
                     input=InputConfig(channel_order="BGR" if bgr else "RGB"),
                     arch_options={k: v for k, v in options.items() if k != "num_classes"},
                     source=source, dataset=dataset)


# ---------------------------------------------------------------------------------------------
# Checked loading


def _head_rows(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("VIT.head.linear.weight", "head.linear.weight"):
        if key in state_dict and state_dict[key].dim() == 2:
            return int(state_dict[key].shape[0])
    return None


_OPTION_TYPES = {"token_mixing": bool, "drop_path_rate": float}


def _arch_from_meta(wf: WeightFile) -> tuple[str, dict[str, Any]]:
    """(arch, options) that the file's metadata names, checked against the registry and the weights.

    Done before any model is built: the metadata sizes the classifier head, so a class count that
    the weights do not back (or an unknown option) must be refused before it is allocated.
    """
    meta = wf.meta
    if meta.arch not in list_models():
        raise CheckpointError(f"{wf.path}: metadata names an unknown architecture {meta.arch!r} "
                              f"(known: {', '.join(list_models())})")
    is_v2_weights = "VIT.head.linear.weight" in wf.state_dict
    if is_v2_weights != meta.arch.startswith("poster_v2"):
        raise CheckpointError(f"{wf.path}: metadata says {meta.arch} but the weights are "
                              f"POSTER {'V2' if is_v2_weights else 'V1'} weights")
    rows = _head_rows(wf.state_dict)
    if rows != meta.num_classes:
        raise CheckpointError(f"{wf.path}: metadata says {meta.num_classes} classes but the classifier weights "
                              f"have {rows if rows is not None else 'no'} rows")
    options = dict(meta.arch_options)
    for name, value in options.items():
        wanted = _OPTION_TYPES.get(name)
        if wanted is None:
            raise CheckpointError(f"{wf.path}: metadata gives {meta.arch} an unknown option {name!r}")
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = options[name] = float(value)
        if not isinstance(value, wanted) or (wanted is float and not 0.0 <= value < 1.0):
            raise CheckpointError(f"{wf.path}: metadata option {name}={str(value)[:40]!r} is not valid")
    return meta.arch, {"num_classes": meta.num_classes, **options}


# ---------------------------------------------------------------------------------------------
# Public entry points


def model_from_weight_file(wf: WeightFile, dataset: str | None = None,
                           channel_order: str | None = None) -> nn.Module:
    if wf.kind == "landmark":
        raise CheckpointError(f"{wf.path}: this is the MobileFaceNet landmark backbone, not a POSTER model; "
                              f"give it to training as {option('landmark')}")
    if wf.meta is not None:
        meta = wf.meta
        arch, options = _arch_from_meta(wf)
    else:
        arch, options = infer_architecture(wf.state_dict, wf.path)
        if not 1 <= options["num_classes"] <= MAX_CLASSES:
            raise CheckpointError(f"{wf.path}: a classifier with {options['num_classes']} classes is not supported")
        meta = release_meta(arch, options, dataset, Path(wf.path).name)
    if channel_order is not None:
        meta = meta.with_input(channel_order=channel_order)
    model = create_model(arch, **options)
    load_state_dict_checked(model, wf.state_dict, wf.path)
    model.meta = meta
    return model


def model_from_release(wf: WeightFile, release, channel_order: str | None = None) -> nn.Module:
    """A model built from a release record: its metadata is the record's, never guessed from keys;
    a file of another architecture under the release's name fails the strict check."""
    if wf.kind == "landmark":
        raise CheckpointError(f"{wf.path}: this is the MobileFaceNet landmark backbone, not {release.name}")
    meta = release.meta()
    if channel_order is not None:
        meta = meta.with_input(channel_order=channel_order)
    model = create_model(meta.arch, num_classes=meta.num_classes, **meta.arch_options)
    load_state_dict_checked(model, wf.state_dict, f"{wf.path} ({release.name})")
    model.meta = meta
    return model


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "cpu", *,
               dataset: str | None = None, channel_order: str | None = None) -> nn.Module:
    """A ready model in eval mode from any supported file or a release name.

    The returned model carries ``model.meta`` (a ``ModelMeta``): class names, channel order,
    normalisation and input size to use with these weights.  A release name
    (``"poster_v2.rafdb"``) takes all of it from the release record and fetches the authors' file
    on first use (``poster.pretrained``, ``poster.hub``).  For an anonymous file, ``dataset`` names
    the class order when its keys cannot tell (7-class V2: RAF-DB or AffectNet-7).
    """
    path = resolve_weights(path_or_name)
    release = RELEASES.get(str(path_or_name)) if not Path(path_or_name).is_file() else None
    if release is not None and dataset is not None and dataset != release.dataset:
        raise CheckpointError(f"{release.name} is a {release.dataset} model; dataset={dataset!r} does not apply "
                              "(a release's class order comes from its record)")
    wf = read_weight_file(path, map_location="cpu")
    if release is not None:
        model = model_from_release(wf, release, channel_order=channel_order)
    else:
        model = model_from_weight_file(wf, dataset=dataset, channel_order=channel_order)
    return model.to(device).eval()
