"""The data a training run works on, built once before the first step and never changed after.

``build_data_bundle`` reads the splits, holds out a stratified validation split when none is
given, applies the ``limit_*`` subsets, decodes every image once (stopping at the first bad one,
or dropping and counting them with ``skip_bad``) and, with ``cache``, keeps the training images
as the 112-pixel uint8 cache.  The result is a frozen :class:`DataBundle`; loaders, samplers and
devices are the fit loop's business.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..data import build_dataset
from ..data.datasets import check_images
from ..errors import ConfigError, PosterError, option
from .data import stratified_split

log = logging.getLogger(__name__)

Split = tuple[list, list[int]]  # (records, targets)


@dataclass(frozen=True)
class DataBundle:
    class_names: tuple[str, ...]
    train_records: list
    train_targets: list[int]
    eval_sets: dict[str, Split]  # "val" always, "test" when a test split is used
    cache: Any = None  # UInt8Cache of the training images, or None (decode per batch)
    skipped_images: dict[str, int] | None = None  # split -> images dropped by skip_bad


def _subset(records: list, targets: list[int], limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(records):
        return records, targets
    _, keep = stratified_split(targets, limit / len(records), seed)
    return [records[i] for i in keep], [targets[i] for i in keep]


def _read_splits(recipe, options) -> tuple[tuple[str, ...], Split, dict[str, Split], dict[str, str]]:
    """(class names, train split, eval splits, origins) as listed, before any image is decoded."""
    order, seed = recipe.channel_order, recipe.seed
    train = build_dataset(options.dataset, options.data, options.train_split, channel_order=order)
    origins = dict(train.origins)
    records, targets = list(train.records), list(train.targets)
    if options.val_split:
        val = build_dataset(options.dataset, options.data, options.val_split, channel_order=order)
        origins.update(val.origins)
        val_split: Split = (list(val.records), list(val.targets))
    else:
        tr_idx, va_idx = stratified_split(targets, options.val_fraction, seed)
        val_split = ([records[i] for i in va_idx], [targets[i] for i in va_idx])
        records, targets = [records[i] for i in tr_idx], [targets[i] for i in tr_idx]
    eval_sets = {"val": _subset(*val_split, options.limit_val, seed)}
    if options.test_split:
        test = build_dataset(options.dataset, options.data, options.test_split, channel_order=order)
        origins.update(test.origins)
        if tuple(test.class_names) != tuple(train.class_names):
            raise PosterError(f"test split classes {test.class_names} differ from training {train.class_names}")
        eval_sets["test"] = _subset(list(test.records), list(test.targets), options.limit_test, seed)
    if options.select_on == "test" and "test" not in eval_sets:
        raise ConfigError(f"{option('select_on', 'test')} needs a test split")
    return tuple(train.class_names), _subset(records, targets, options.limit_train, seed), eval_sets, origins


class _Checker:
    """Decodes splits once, logging and counting what ``skip_bad`` drops."""

    def __init__(self, skip_bad: bool, origins: dict[str, str], say: Callable[..., None]):
        self.skip_bad, self.origins, self.say = skip_bad, origins, say
        self.skipped: dict[str, int] = {}

    def check(self, split: str, records: list) -> Split:
        good, bad = check_images(records, self.skip_bad, origins=self.origins)
        return self.report(split, records, good, bad)

    def report(self, split: str, records: list, good: list, bad: list) -> Split:
        """Log skipped images, refuse a split left empty, count what was skipped."""
        if bad:
            shown = "; ".join(why for _, why in bad[:3])
            self.say("skipped %d bad image(s) of %d in the %s split (%s): %s%s", len(bad), len(records),
                     split, option("skip_bad", True), shown, " ..." if len(bad) > 3 else "", level=logging.WARNING)
        if not good:
            raise PosterError(f"no usable images left in the {split} split ({len(bad)} bad)")
        self.skipped[split] = len(bad)
        return good, [label for _, label in good]


def _checked_train_split(recipe, options, checker: _Checker, records: list) -> tuple[Split, Any]:
    """The checked training split, and with ``cache="memory"`` its uint8 cache (else None)."""
    if options.cache != "memory":
        return checker.check("train", records), None
    # One decoding pass for both the image check and the cache (issue 4: decode once).
    from .cache import check_and_cache

    start = time.perf_counter()
    cache, good, bad = check_and_cache(records, recipe.channel_order, recipe.input_size, options.skip_bad,
                                       checker.origins)
    split = checker.report("train", records, good, bad)
    checker.say("uint8 cache of %d images (memory) built in %.1fs, in the same pass as the image check",
                len(split[0]), time.perf_counter() - start)
    return split, cache


def _folder_cache(recipe, options, records: list, say: Callable[..., None]) -> Any:
    """A memory-mapped uint8 cache file in the ``cache`` folder, shared by runs and ranks."""
    from .cache import build_uint8_cache

    start = time.perf_counter()
    cache = build_uint8_cache(records, recipe.channel_order, recipe.input_size, path=options.cache)
    say("uint8 cache of %d images (%s) %s in %.1fs", len(records), options.cache,
        "reused" if cache.reused else "built", time.perf_counter() - start)
    return cache


def build_data_bundle(recipe, options, is_main: bool = True) -> DataBundle:
    """The run's data (``recipe``: a Recipe, ``options``: TrainOptions); only ``is_main`` logs."""

    def say(msg: str, *args: Any, level: int = logging.INFO) -> None:
        if is_main:
            log.log(level, msg, *args)

    class_names, (records, _), eval_sets, origins = _read_splits(recipe, options)
    checker = _Checker(options.skip_bad, origins, say)
    (records, targets), cache = _checked_train_split(recipe, options, checker, records)
    eval_sets = {split: checker.check(split, recs) for split, (recs, _) in eval_sets.items()}
    say("data: %d train, %d val%s images, %d classes %s", len(records), len(eval_sets["val"][0]),
        f", {len(eval_sets['test'][0])} test" if "test" in eval_sets else "", len(class_names), list(class_names))
    if options.cache and cache is None:
        cache = _folder_cache(recipe, options, records, say)
    return DataBundle(class_names=class_names, train_records=records, train_targets=targets, eval_sets=eval_sets,
                      cache=cache, skipped_images=checker.skipped)
