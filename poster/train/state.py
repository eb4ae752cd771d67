"""What a training run must carry across an interruption, in one place.

``TrainState`` holds the model, the SAM(Adam) optimizer and its ExponentialLR schedule, the step
and epoch counters, the best-so-far record, the per-epoch history and the global RNG.  Its
``state_dict`` is the ``training`` entry of ``last.pth``/``best.pth``; ``load_state_dict`` is what
``--resume`` does with it.  The model's weights travel beside it (``save_checkpoint`` writes them
as the checkpoint's ``state_dict``), so a trained file loads for inference without this module.

``build_optimizer`` is the one construction of the optimizer from a recipe (the trainer and
``poster benchmark`` both use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .recipes import Recipe
from .sam import SAM

__all__ = ["TrainState", "build_optimizer", "build_scheduler"]


def build_optimizer(model: nn.Module, recipe: Recipe, fused: bool = False) -> SAM:
    """SAM around Adam with the recipe's hyper-parameters, over the trainable parameters.

    ``fused``: one Adam kernel for the whole update (CUDA only); SAM's perturb/restore are
    foreach ops either way."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if fused else {}
    return SAM(params, torch.optim.Adam, rho=recipe.sam_rho, adaptive=recipe.sam_adaptive, lr=recipe.lr,
               betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.ExponentialLR:
    """ExponentialLR(gamma), stepped once per epoch."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe.lr_gamma)


def _no_best() -> dict[str, Any]:
    return {"metric": -math.inf, "epoch": None}


@dataclass
class TrainState:
    """The resumable state of a run; ``epoch`` counts the epochs done, ``step`` the optimiser steps."""

    model: nn.Module
    optimizer: SAM
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    step: int = 0
    best: dict[str, Any] = field(default_factory=_no_best)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, model: nn.Module, recipe: Recipe, fused: bool = False) -> "TrainState":
        optimizer = build_optimizer(model, recipe, fused)
        return cls(model=model, optimizer=optimizer, scheduler=build_scheduler(optimizer, recipe))

    def record_epoch(self, entry: dict[str, Any], metric: float) -> bool:
        """Append one epoch's history entry; True when ``metric`` beats the best so far."""
        is_best = metric > self.best["metric"]
        if is_best:
            self.best = {"metric": metric, "epoch": entry["epoch"]}
        self.history.append({**entry, "best": is_best})
        self.epoch = int(entry["epoch"])
        return is_best

    def state_dict(self) -> dict[str, Any]:
        # The augmentation generator needs no saving: it is re-seeded from (seed, epoch, rank) at the
        # start of every epoch.  The global RNG (drop path) advances identically on every rank.
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"epoch": self.epoch, "step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng, "best": dict(self.best),
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Everything but the model's weights (the checkpoint's ``state_dict`` holds those)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best = dict(state["best"])
        self.history = list(state["history"])
