"""Sharpness-Aware Minimisation (SAM / ASAM) as a wrapper around any torch optimizer.

Algorithm (docs/faithfulness.md#training), per batch::

    loss(w).backward()                 # g = grad at w
    opt.first_step(zero_grad=True)     # w <- w + e,  e = rho * g / (||g|| + 1e-12)
    loss(w + e).backward()             # g' = grad at the perturbed weights, same batch
    opt.second_step(zero_grad=True)    # w <- saved w; base optimizer step with g'

``||g||`` is ONE global L2 norm over every parameter that has a gradient.  With
``adaptive=True`` (ASAM, Kwon et al. 2021) the scale operator is ``T_w = |w|``:
the norm is ``||T_w g|| = || |w| * g ||`` and the perturbation is
``e = rho * T_w^2 g / ||T_w g|| = rho * w^2 * g / (|| |w| g || + 1e-12)``.

Parameters whose ``grad`` is ``None`` or that have ``requires_grad=False`` (frozen ones,
or ones unused in the forward pass) are neither perturbed nor counted in the norm; the
base optimizer skips parameters without a gradient as usual.

The wrapper and its base optimizer share the *same* ``param_groups`` dicts, so an LR
scheduler built on the SAM object drives the base optimizer's learning rate, and the
per-group ``rho``/``adaptive`` live next to ``lr``/``betas``.

Restoring the weights is an exact copy of the saved tensors (not ``w - e``), so the
base optimizer starts from bit-identical weights.  ``state_dict()`` is the base
optimizer's state dict (Adam moments and step counts included): resuming is exact.
The saved weights of an unfinished SAM step are not part of it (checkpoint between
steps).  ``load_state_dict`` also accepts a state dict written by the original POSTER
code (SAM's own state only, holding ``old_p``/``e_w`` and no Adam moments): those SAM
entries are dropped and the base optimizer starts with fresh moments.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..precision import autocast

__all__ = ["SAM", "sam_train_step"]

_SAM_STATE_KEYS = ("old_p", "e_w")  # per-parameter keys the original implementation stored


class SAM(torch.optim.Optimizer):
    """SAM wrapper: ``SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=4e-5, betas=(0.9, 0.999))``.

    ``base_kwargs`` go to ``base_optimizer_cls``; ``rho`` and ``adaptive`` become per-group
    options (a param-group dict may override them).
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer_cls: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise ValueError(f"SAM rho must be non-negative, got {rho!r}")
        defaults = dict(rho=float(rho), adaptive=bool(adaptive), **base_kwargs)
        super().__init__(params, defaults)
        # The base optimizer receives our group dicts; torch's add_param_group fills in
        # its own defaults *in place* and keeps the same dict objects, so the groups
        # are shared.  We then point at the base optimizer's list to be sure.
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._saved: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    # ------------------------------------------------------------------ helpers
    def _params_with_grad(self) -> list[tuple[dict, list[torch.Tensor]]]:
        out = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None and p.requires_grad]
            if ps:
                out.append((group, ps))
        return out

    @staticmethod
    def _by_device(ps: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[torch.Tensor]]:
        buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
        for p in ps:
            buckets[(p.device, p.dtype)].append(p)
        return buckets

    @torch.no_grad()
    def _grad_norm(self, groups: list[tuple[dict, list[torch.Tensor]]]) -> torch.Tensor:
        """One global L2 norm over all gradients (``|w| * g`` for adaptive groups)."""
        shared = groups[0][1][0].device
        norms: list[torch.Tensor] = []
        for group, ps in groups:
            for (device, _), bucket in self._by_device(ps).items():
                grads = [p.grad for p in bucket]
                if group["adaptive"]:
                    grads = torch._foreach_mul(grads, torch._foreach_abs(bucket))
                norms.extend(n.to(shared) for n in torch._foreach_norm(grads, 2))
        return torch.linalg.vector_norm(torch.stack(norms), 2)

    # ------------------------------------------------------------------ steps
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save the weights and move them to ``w + e`` (the local worst case)."""
        self._saved = []
        groups = self._params_with_grad()
        if groups:
            norm = self._grad_norm(groups)
            for group, ps in groups:
                scale = group["rho"] / (norm + 1e-12)
                for (device, dtype), bucket in self._by_device(ps).items():
                    olds = []
                    for p in bucket:
                        old = self.state[p].get("old_p")
                        if old is None or old.shape != p.shape or old.dtype != p.dtype or old.device != p.device:
                            old = self.state[p]["old_p"] = torch.empty_like(p)
                        olds.append(old)
                    torch._foreach_copy_(olds, bucket)
                    self._saved.append((bucket, olds))
                    e_w = torch._foreach_mul([p.grad for p in bucket], scale.to(device=device, dtype=dtype))
                    if group["adaptive"]:
                        torch._foreach_mul_(e_w, torch._foreach_mul(bucket, bucket))
                    torch._foreach_add_(bucket, e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the saved weights exactly, then take the base optimizer's step."""
        for bucket, olds in getattr(self, "_saved", []):
            torch._foreach_copy_(bucket, olds)
        self._saved = []
        self.base_step(zero_grad)

    @torch.no_grad()
    def base_step(self, zero_grad: bool = False) -> None:
        """A plain base-optimizer step with the current gradients (no perturbation: rho = 0)."""
        self.base_optimizer.step()
        # Tell an LR scheduler that the optimizer did step (first/second_step used
        # directly instead of step() would otherwise trigger torch's order warning).
        self._opt_called = True
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Full SAM step.  Gradients at ``w`` must already be computed (``loss.backward()``);
        ``closure`` must zero nothing, re-run forward + backward on the same batch and may
        return the loss, which is returned (it is the loss at the perturbed weights)."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that does forward + backward on the same batch")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict (moments, step counts, lr, rho, adaptive, ...)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        state = {}
        dropped = False
        for k, v in sd.get("state", {}).items():
            if isinstance(v, dict) and any(key in v for key in _SAM_STATE_KEYS):
                dropped = True
                v = {kk: vv for kk, vv in v.items() if kk not in _SAM_STATE_KEYS}
                if not v:
                    continue
            state[k] = v
        if dropped and not state:
            warnings.warn(
                "SAM state dict holds only SAM's own buffers (no base-optimizer moments, as saved by "
                "the original POSTER code); the base optimizer restarts with fresh state",
                stacklevel=2,
            )
        sd["state"] = state
        self.base_optimizer.load_state_dict(sd)
        # torch rebuilds the group dicts on load: share them again and fill in SAM options
        # missing from a plain base-optimizer state dict.
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            group.setdefault("rho", self.defaults["rho"])
            group.setdefault("adaptive", self.defaults["adaptive"])
        self.state = defaultdict(dict)
        self._saved = []

    def __repr__(self) -> str:
        return f"SAM(rho={self.defaults['rho']}, adaptive={self.defaults['adaptive']}, base={self.base_optimizer!r})"


def sam_train_step(model: nn.Module, optimizer: SAM, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM (docs/faithfulness.md#training): loss and gradients at w, move to w + e, loss and gradients there on the SAME
    batch, restore w and take the base-optimizer step with the second gradients.

    Under DistributedDataParallel both backward passes all-reduce, so every rank perturbs by the
    global gradient: the step equals the single-process step on the whole batch.  With
    ``rho == 0`` the perturbation is zero and the second pass would repeat the first, so a plain
    base-optimizer step is taken (half the cost, the same result).
    """
    device_type = x.device.type

    def forward_loss() -> tuple[torch.Tensor, torch.Tensor]:
        with autocast("bf16" if bf16 else "fp32", device_type):
            logits = model(x)
        return loss_fn(logits.float(), y), logits

    loss, logits = forward_loss()
    loss.backward()
    if optimizer.param_groups[0].get("rho", 0.0) == 0:
        optimizer.base_step(zero_grad=True)
        return loss.detach(), logits.detach()
    optimizer.first_step(zero_grad=True)
    loss2, _ = forward_loss()
    loss2.backward()
    optimizer.second_step(zero_grad=True)
    return loss.detach(), logits.detach()
