"""From a weights file to a ready model: architecture inference, checked loading, metadata.

The original code loaded non-strictly and silently (a wrong ``--modeltype`` gave a half
random model).  Here every missing, unexpected or mis-shaped key is an error that lists them.
What a family's state dicts look like (head key, how to tell its architectures apart) and what
its options take come from the model registry (``poster.models``), not from this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..data.layouts import DATASET_CLASSES
from ..errors import CheckpointError, ConfigError, option
from ..meta import MAX_CLASSES, ModelMeta
from ..models import create_model, get_arch, list_families, list_models
from .checked import load_state_dict_checked
from .formats import WeightFile, read_weight_file
from .hub import resolve
from .releases import RELEASES, Release

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Architecture inference


def infer_architecture(state_dict: Mapping[str, torch.Tensor], path: str = "") -> tuple[str, dict[str, Any]]:
    """(registry name, options) of the model a prefix-free state dict belongs to, as its family tells."""
    where = f"{path}: " if path else ""
    for family in list_families():
        try:
            found = family.match_state_dict(state_dict)
        except ConfigError as e:
            raise CheckpointError(f"{where}{e}") from None
        if found is not None:
            return found
    sample = sorted(state_dict)[:5]
    heads = " / ".join(repr(f.head_key) for f in list_families())
    raise CheckpointError(f"{where}cannot tell which POSTER model these weights belong to "
                          f"(no {heads}); first keys: {sample}")


def release_meta(arch: str, options: Mapping[str, Any], dataset: str | None, source: str) -> ModelMeta:
    """Metadata of weights that carry none, from the release record they fit: same family (a depth
    of POSTER V1 is an option of the same official code and recipe, so a small or base V1 RAF-DB file
    reads BGR as the released large one does), options and class count, the same architecture
    first; ``dataset``, else the file's name, picks among several (7-class V2: RAF-DB, AffectNet-7,
    CAER-S).  Weights that fit no record get generic metadata."""
    num_classes = int(options["num_classes"])
    arch_options = {k: v for k, v in options.items() if k != "num_classes"}
    family = get_arch(arch).family
    fits = sorted((r for r in RELEASES.values() if r.kind == "model" and get_arch(r.arch).family is family
                   and r.num_classes == num_classes and dict(r.arch_options) == arch_options),
                  key=lambda r: r.arch != arch)  # the same architecture first (sorted() is stable)
    if dataset is not None:
        chosen = [r for r in fits if r.dataset == dataset]
    else:
        chosen = [r for r in fits if Path(source).name in r.file_names] or fits
    if chosen:
        if len(chosen) > 1:
            log.warning("%s: these weights fit the releases %s; assuming %s's class order (pass dataset= one "
                        "of %s otherwise)", source, ", ".join(r.name for r in chosen), chosen[0].name,
                        ", ".join(repr(r.dataset) for r in chosen))
        return dataclasses.replace(chosen[0].meta(), arch=arch, arch_options=arch_options, source=source)
    names = DATASET_CLASSES.get(dataset or "")
    if names is None or len(names) != num_classes:
        names = tuple(f"class_{i}" for i in range(num_classes))
    return ModelMeta(arch=arch, num_classes=num_classes, class_names=names, arch_options=arch_options,
                     source=source, dataset=dataset)


# ---------------------------------------------------------------------------------------------
# Checked loading


def _arch_from_meta(wf: WeightFile) -> tuple[str, dict[str, Any]]:
    """(arch, options) that the file's metadata names, checked against the registry and the weights.

    Done before any model is built: the metadata sizes the classifier head, so a class count that
    the weights do not back (or an unknown option) must be refused before it is allocated.
    """
    meta = wf.meta
    if meta.arch not in list_models():
        raise CheckpointError(f"{wf.path}: metadata names an unknown architecture {meta.arch!r} "
                              f"(known: {', '.join(list_models())})")
    spec = get_arch(meta.arch)
    head = spec.family.head_key
    if head not in wf.state_dict:
        other = next((f.name for f in list_families() if f.head_key in wf.state_dict), None)
        raise CheckpointError(f"{wf.path}: metadata says {meta.arch} but the weights are "
                              + (f"{other} weights" if other else f"not {spec.family.name} weights (no {head!r})"))
    rows = int(wf.state_dict[head].shape[0]) if wf.state_dict[head].dim() == 2 else None
    if rows != meta.num_classes:
        raise CheckpointError(f"{wf.path}: metadata says {meta.num_classes} classes but the classifier weights "
                              f"have {rows if rows is not None else 'no'} rows")
    options = {}
    for name, value in meta.arch_options.items():
        if name not in spec.options or name == "num_classes":
            raise CheckpointError(f"{wf.path}: metadata gives {meta.arch} an unknown option {name!r}")
        try:
            options[name] = spec.checked_option(name, value)
        except ConfigError as e:
            raise CheckpointError(f"{wf.path}: metadata option {e}") from None
    return meta.arch, {"num_classes": meta.num_classes, **options}


def _build(arch: str, options: Mapping[str, Any], source: str) -> nn.Module:
    """``create_model``, its refusal of an option's value (a rate out of range) named as the file's."""
    try:
        return create_model(arch, **options)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {arch} refuses its options: {e}") from None


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
    model = _build(arch, options, wf.path)
    load_state_dict_checked(model, wf.state_dict, wf.path)
    model.meta = meta
    return model


def model_from_release(wf: WeightFile, release: Release, channel_order: str | None = None) -> nn.Module:
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
    on first use (``releases.py``, ``hub.py``).  For an anonymous file, ``dataset`` names
    the class order when its keys cannot tell (7-class V2: RAF-DB, AffectNet-7 or CAER-S).
    """
    path, release = resolve(path_or_name)
    if release is not None and dataset is not None and dataset != release.dataset:
        raise CheckpointError(f"{release.name} is a {release.dataset} model; dataset={dataset!r} does not apply "
                              "(a release's class order comes from its record)")
    wf = read_weight_file(path, map_location="cpu")
    if release is not None:
        model = model_from_release(wf, release, channel_order=channel_order)
    else:
        model = model_from_weight_file(wf, dataset=dataset, channel_order=channel_order)
    return model.to(device).eval()
