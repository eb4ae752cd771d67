"""The training loop: SAM(Adam) over a recipe, honest model selection, atomic resumable checkpoints.

One ``Trainer`` serves a single process (CPU or one GPU) and every process of a ``torchrun``
launch (DistributedDataParallel; rank 0 alone logs and writes).  Per epoch it trains, steps the
ExponentialLR schedule, validates, and writes ``last.pth`` (and ``best.pth`` when the selection
metric improved) atomically in our checkpoint format with the full training state.

The pieces it drives live beside it: the data (``bundle.build_data_bundle``, a frozen bundle), the
resumable state (``state.TrainState``: model, optimizer, schedule, counters, best, history, RNG),
the run folder's records (``recorder.RunRecorder``) and the checkpoint pair (``runfiles``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint.formats import read_weight_file, save_checkpoint
from ..checkpoint.checked import load_backbone_weights, load_state_dict_checked
from ..data import EvalTransform
from ..device import resolve_device
from ..errors import PosterError, TrainingDiverged, option
from ..evaluation.evaluate import predict_logits
from ..fileio import remove_stale_temporaries
from ..meta import ModelMeta
from ..evaluation.metrics import classification_report
from ..models import create_model
from ..precision import autocast, channels_last_for, resolve_precision
from .augment import AugmentConfig, BatchAugment
from .bundle import DataBundle, build_data_bundle
from .data import EpochSampler, UInt8ImageDataset, balanced_weights
from ..distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .losses import build_loss
from . import runfiles
from .recipes import Recipe, run_defaults
from .recorder import RunRecorder
from .options import EpochStats, TrainOptions
from .sam import sam_train_step
from .state import TrainState

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """``model`` in eval mode for the block, back in the mode it was in afterwards."""
    was_training = model.training
    try:
        yield model
    finally:
        model.train(was_training)


def _backbone_warning(ir50: str | None, landmark: str | None) -> str | None:
    """The warning for a run that starts a backbone from random weights (None when both are given)."""
    missing = [name for name, path in (("ir50", ir50), ("landmark", landmark)) if not path]
    if not missing:
        return None
    parts = {"ir50": "IR-50 trunk", "landmark": "landmark net"}
    return ("!" * 78 + f"\ntraining without {' and '.join(option(m) for m in missing)}: the "
            f"{' and '.join(parts[m] for m in missing)} "
            "start(s) from random weights.\nPOSTER's published accuracy depends on the pretrained IR-50 (ir50.pth) "
            "and MobileFaceNet\n(mobilefacenet_model_best.pth.tar) files; expect much lower accuracy without them.\n"
            + "!" * 78)


class Trainer:
    """Trains ``recipe`` as ``options`` say: ``Trainer(recipe, options).fit()`` -> the final report."""

    def __init__(self, recipe: Recipe, options: TrainOptions):
        self.recipe = recipe
        self.options = options
        self.out = Path(options.output_dir)
        self.device = resolve_device(options.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(options.precision, self.device, "train")
        self.use_bf16 = self.precision == "bf16"
        # the IR token reshape is a logical reshape, so the result does not depend on the layout
        self.channels_last = channels_last_for(options.channels_last, self.precision)
        if recipe.batch_size % self.dist.world_size:
            raise PosterError(f"batch size {recipe.batch_size} is not divisible by the {self.dist.world_size} "
                              "processes: the global batch is kept, so it must split evenly")
        self.local_batch = recipe.batch_size // self.dist.world_size
        suggested = run_defaults(recipe.name)
        self.workers = suggested.workers if options.workers is None else options.workers
        self.eval_batch_size = (suggested.eval_batch_size if options.eval_batch_size is None
                                else options.eval_batch_size)
        self.loss_fn = build_loss(recipe.loss)
        # Built by _prepare(), at the start of fit():
        self.data: DataBundle | None = None
        self.meta: ModelMeta | None = None
        self.state: TrainState | None = None
        self.ddp: nn.Module | None = None  # the model as trained (DistributedDataParallel under torchrun)
        self.step_model: nn.Module | None = None  # ddp, or its torch.compile wrapper
        self.generator: torch.Generator | None = None  # augmentation randomness, re-seeded every epoch
        self.batches: Any = None  # the cached path's batches (already augmented on the device), or None
        self.train_loader: DataLoader | None = None
        self.sampler: EpochSampler | None = None
        self.augment = BatchAugment(AugmentConfig.from_recipe(recipe, input_order=recipe.channel_order))
        self.recorder: RunRecorder | None = None
        self.compile_seconds: float | None = None

    @property
    def model(self) -> nn.Module:
        """The plain model (evaluation and checkpoints use it, never the DDP or compiled wrapper)."""
        return self.state.model

    def _log(self, msg: str, *args: Any, level: int = logging.INFO) -> None:
        if self.dist.is_main:
            log.log(level, msg, *args)

    # ------------------------------------------------------------------ setup

    def _build_model(self) -> nn.Module:
        r, o = self.recipe, self.options
        torch.manual_seed(r.seed)
        model = create_model(r.arch, num_classes=len(self.data.class_names), **r.arch_options)
        if o.ir50 or o.landmark:
            report = load_backbone_weights(model, ir50=o.ir50, landmark=o.landmark)
            self._log("pretrained backbones: %s", json.dumps(report)[:300])
        warning = _backbone_warning(o.ir50, o.landmark)
        if warning:
            self._log("%s", warning, level=logging.WARNING)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if o.sync_bn and self.dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.meta = ModelMeta(arch=r.arch, num_classes=len(self.data.class_names), class_names=self.data.class_names,
                              input=r.input_config(), arch_options=dict(r.arch_options),
                              source=f"poster train --recipe {r.name}", dataset=o.dataset)
        return model

    def _build_batches(self) -> None:
        """The training batches: a DataLoader of decoded images augmented per batch on the device,
        or (with a cache) batches gathered, augmented and normalised on the device."""
        r, data = self.recipe, self.data
        weights = balanced_weights(data.train_targets) if r.sampler == "balanced" else None
        self.sampler = EpochSampler(len(data.train_records), r.seed, True, weights, self.dist.rank,
                                    self.dist.world_size)
        self.train_loader = DataLoader(
            UInt8ImageDataset(data.train_records, r.input_size, r.channel_order), batch_size=self.local_batch,
            sampler=self.sampler, num_workers=self.workers, drop_last=False,
            pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0)
        self.generator = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        if data.cache is not None:
            from .cache import CachedBatches

            self.batches = CachedBatches(data.cache, self.augment.config, self.local_batch, self.device,
                                         sampler=self.sampler, generator=self.generator)

    def _prepare(self) -> None:
        """Data, model, optimizer state (fresh or resumed), wrappers and the run folder's records."""
        o = self.options
        if o.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.data = build_data_bundle(self.recipe, o, self.dist.is_main)
        self._build_batches()
        model = self._build_model()
        self.state = TrainState.create(model, self.recipe, fused=self.device.type == "cuda")
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type
                                                        == "cuda" else None) if self.dist.enabled else model)
        # The compiled module shares the parameters; evaluation and checkpoints use the plain model.
        self.step_model = torch.compile(self.ddp) if o.compile else self.ddp
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self._log("model %s: %.3fM trainable parameters; %s, %s, %d process(es), batch %d (%d per process)",
                  self.recipe.arch, n_train / 1e6, self.device, ("bf16 autocast" if self.use_bf16 else "fp32")
                  + (", channels-last" if self.channels_last else ""), self.dist.world_size,
                  self.recipe.batch_size, self.local_batch)
        self._open_run_folder()

    def _open_run_folder(self) -> None:
        """Resume from, or refuse to overwrite, the run folder; record the run's configuration."""
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.options.resume:
            self._remove_stale_temporaries()
            self._resume()
        elif (self.out / runfiles.LAST).exists():
            raise PosterError(f"{self.out} already holds a run (last.pth); use --resume to continue it "
                              "or choose another --output-dir")
        if self.dist.is_main:
            self.recorder = RunRecorder(self.out, self.recipe.name, self.recipe.epochs, self.options.tensorboard)
            self.recorder.config({"recipe": self.recipe.to_dict(), "options": asdict(self.options),
                                  "world_size": self.dist.world_size, "device": str(self.device)})

    # ------------------------------------------------------------------ checkpoints

    def _save(self, epoch_done: int, is_best: bool) -> None:
        if not self.dist.is_main:
            return
        training = {**self.state.state_dict(), "recipe": self.recipe.to_dict(),
                    "sampler": {"epoch": epoch_done, "start": 0}, "world_size": self.dist.world_size}

        def write(path: Path) -> None:
            try:
                save_checkpoint(path, self.model, self.meta, training=training)
            except OSError as e:
                raise PosterError(f"could not write {path} after epoch {epoch_done}: {e.strerror or e}; "
                                  f"{runfiles.LAST} and {runfiles.BEST} of the previous epochs are intact and "
                                  f"agree (writes are atomic). Free space and continue with {option('resume', True)}") from e

        runfiles.commit_epoch(self.out, write, is_best)

    def _remove_stale_temporaries(self) -> None:
        """Half-written checkpoint temporaries of the interrupted run (the finished files are intact)."""
        if not self.dist.is_main:
            return
        removed = remove_stale_temporaries(self.out)
        if removed:
            self._log("removed %d unfinished temporary file(s) left by an interrupted write: %s", len(removed),
                      ", ".join(p.name for p in removed), level=logging.WARNING)

    def _resume(self) -> None:
        path = self.out / runfiles.LAST
        if not path.is_file():
            raise PosterError(f"{option('resume', True)}: no checkpoint at {path}")
        wf = read_weight_file(path)
        training = wf.info.get("training")
        if not isinstance(training, dict):
            raise PosterError(f"{path}: has no training state to resume from")
        self._check_resumable_recipe(training["recipe"], int(training["epoch"]))
        if self.dist.is_main:
            runfiles.recover(self.out, runfiles.best_epoch_of(wf))
        load_state_dict_checked(self.model, wf.state_dict, str(path))
        self.state.load_state_dict(training)
        self._log("resumed from %s after epoch %d (step %d)", path, self.state.epoch, self.state.step)

    def _check_resumable_recipe(self, saved: dict[str, Any], epochs_done: int) -> None:
        """The recipe must be the interrupted run's, except that ``epochs`` may grow (extend a run)."""
        now = self.recipe.to_dict()
        saved = Recipe.from_dict(saved).to_dict()  # a recipe saved with the old run knobs reads as today's
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed == ["epochs"] and now["epochs"] >= epochs_done:
            self._log("extending the run from %d to %d epochs", saved["epochs"], now["epochs"])
            return
        if changed == ["epochs"]:
            raise PosterError(f"{option('resume', True)}: the run has already done {epochs_done} epochs; epochs={now['epochs']} "
                              "would end it before where it stands")
        if changed:
            raise PosterError(f"{option('resume', True)}: the recipe differs from the interrupted run's in {changed} "
                              "(only epochs may change, to extend a run)")

    # ------------------------------------------------------------------ steps

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a normalised batch: (first-pass loss, first-pass logits)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.options.compile and self.compile_seconds is None:
            start = time.perf_counter()
            out = sam_train_step(self.step_model, self.state.optimizer, self.loss_fn, x, y, self.use_bf16)
            self.compile_seconds = time.perf_counter() - start
            self._log("torch.compile: the first training step took %.1fs (compilation included)", self.compile_seconds)
            return out
        return sam_train_step(self.step_model, self.state.optimizer, self.loss_fn, x, y, self.use_bf16)

    def _augment_seed(self, epoch: int) -> int:
        """Seed of the augmentation generator for one epoch on this rank.  Deriving it, instead of
        carrying one generator's state from epoch to epoch, makes a resumed run draw the same flips,
        noise and erasing on EVERY rank as the uninterrupted run (only rank 0 writes checkpoints)."""
        return (self.recipe.seed * 1_000_003 + epoch) * 65_537 + self.dist.rank

    def _progress(self, epoch: int):
        """The epoch's batches behind a progress bar (main process, on a terminal only)."""
        from tqdm.auto import tqdm

        return tqdm(self.batches if self.batches is not None else self.train_loader,
                    desc=f"epoch {epoch + 1}/{self.recipe.epochs}", unit="batch",
                    disable=None if self.options.progress and self.dist.is_main else True,  # None: a terminal only
                    leave=False)

    def _on_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch augmented and normalised on the device (cached batches already are)."""
        if self.batches is not None:
            return images, labels
        x = self.augment(images.to(self.device, non_blocking=True), self.generator)
        return x, labels.to(self.device, non_blocking=True)

    def _train_epoch(self, epoch: int) -> EpochStats:
        self.ddp.train()
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self._augment_seed(epoch))
        loss_sum = correct = seen = 0.0
        start = time.perf_counter()
        bar = self._progress(epoch)
        for images, labels in bar:
            x, y = self._on_device(images, labels)
            loss, logits = self.train_step(x, y)
            if not bool(torch.isfinite(loss)):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {self.state.step + 1}; "
                    f"stopped. The last good checkpoint ({self.out / runfiles.LAST}) is intact; lower the "
                    f"learning rate or use {option('precision', 'fp32')}, then resume or restart")
            self.state.step += 1
            n = y.shape[0]
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                            img_s=f"{seen * self.dist.world_size / max(elapsed, 1e-9):.1f}")
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.dist, self.device)
        seconds = time.perf_counter() - start
        return EpochStats(epoch=epoch + 1, lr=self.state.optimizer.param_groups[0]["lr"], train_loss=loss_sum / seen,
                          train_acc=correct / seen, images_per_s=seen / seconds, seconds=seconds)

    def evaluate_split(self, split: str, model: nn.Module | None = None) -> tuple[dict[str, Any], Any]:
        """(metrics, report) of ``model`` on an evaluation split, with the exact eval transform."""
        from ..data import ImageListDataset

        records, targets = self.data.eval_sets[split]
        model = self.model if model is None else model
        ds = ImageListDataset(records, self.data.class_names, transform=EvalTransform(self.meta.input))
        loader = DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.workers)
        with _evaluating(model), autocast(self.precision, self.device):
            logits, y = predict_logits(model, loader, self.device)
        names = self.data.class_names
        report = classification_report(logits.argmax(1).numpy(), y, len(names), names)
        loss = F.cross_entropy(logits, torch.as_tensor(y)).item()
        return {"acc": report.accuracy, "loss": loss, "f1": report.macro_f1}, report

    # ------------------------------------------------------------------ main loop

    def fit(self) -> dict[str, Any]:
        try:
            result = self._fit()
            barrier(self.dist)  # rank 0 evaluates the test split last; others wait before teardown
            return result
        finally:
            if self.recorder is not None:
                self.recorder.close()
            cleanup(self.dist)

    def _fit(self) -> dict[str, Any]:
        self._prepare()
        for epoch in range(self.state.epoch, self.recipe.epochs):
            stats = self._train_epoch(epoch)
            self.state.scheduler.step()
            if self.dist.is_main:
                self._end_epoch(stats)
            barrier(self.dist)
        return self._finish()

    def _end_epoch(self, stats: EpochStats) -> None:
        """Validate, select, checkpoint and record one finished epoch (main process)."""
        val, _ = self.evaluate_split("val")
        stats.val_acc, stats.val_loss, stats.val_f1 = val["acc"], val["loss"], val["f1"]
        if self.options.select_on == "test":
            test, _ = self.evaluate_split("test")
            stats.test_acc, stats.test_loss = test["acc"], test["loss"]
        metric = stats.test_acc if self.options.select_on == "test" else stats.val_acc
        is_best = self.state.record_epoch(asdict(stats), metric)
        self._save(stats.epoch, is_best)
        self.recorder.epoch(self.state.history[-1], self.state.history)

    def _finish(self) -> dict[str, Any]:
        if not self.dist.is_main:
            return {}
        best_epoch, select_on = self.state.best["epoch"], self.options.select_on
        best = runfiles.check_best(self.out, best_epoch)
        load_state_dict_checked(self.model, best.state_dict, str(self.out / runfiles.BEST))
        result: dict[str, Any] = {"recipe": self.recipe.name, "select_on": select_on, "best_epoch": best_epoch,
                                  "epochs": self.recipe.epochs, "best_checkpoint": str(self.out / runfiles.BEST)}
        history = self.state.history
        result["selected_val_acc"] = next(h for h in history if h["epoch"] == best_epoch)["val_acc"]
        split = "test" if "test" in self.data.eval_sets else "val"
        metrics, report = self.evaluate_split(split)
        result[f"{split}_report"] = report.to_dict()
        result[f"{split}_acc"] = metrics["acc"]
        if select_on == "test":
            # The papers' protocol: maximum test accuracy over epochs (optimistic).  Also report the
            # honest number: test accuracy of the epoch the held-out validation split would pick.
            honest = max(history, key=lambda h: (h["val_acc"], -h["epoch"]))
            result["test_acc_selected_on_test"] = metrics["acc"]
            result["test_acc_selected_on_val"] = honest["test_acc"]
            result["note"] = (f"{option('select_on', 'test')} picks the epoch with the best TEST accuracy, as the original "
                              "code did; 'test_acc_selected_on_val' is the unbiased estimate")
        self.recorder.report(result, report.confusion_matrix, self.data.class_names,
                             f"{split}, epoch {best_epoch}")
        log.info("done: best epoch %s (selected on %s); %s accuracy %.4f; outputs in %s",
                 best_epoch, select_on, split, metrics["acc"], self.out)
        return result
