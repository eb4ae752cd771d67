from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poster.train.losses import CEPlusLSCE, LabelSmoothingCrossEntropy, build_loss


def _data(seed=0, b=16, c=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, c, (b,), generator=g)
    return logits, target


def _lsce_by_hand(logits, target, eps):
    logp = logits.log_softmax(-1)
    nll = -logp[torch.arange(len(target)), target]
    return ((1 - eps) * nll - eps * logp.mean(-1)).mean()


def test_lsce_definition_and_torch_label_smoothing_agree():
    logits, target = _data()
    want = _lsce_by_hand(logits, target, 0.2)
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.2)(logits, target), want, rtol=1e-13, atol=0)
    # torch's label_smoothing=eps is the same quantity
    torch.testing.assert_close(F.cross_entropy(logits, target, label_smoothing=0.2), want, rtol=1e-13, atol=0)


def test_v1_loss_is_ce_plus_two_lsce():
    logits, target = _data(1)
    want = F.cross_entropy(logits, target) + 2 * _lsce_by_hand(logits, target, 0.2)
    loss = build_loss("ce+2lsce")
    assert isinstance(loss, CEPlusLSCE)
    torch.testing.assert_close(loss(logits, target), want, rtol=1e-13, atol=0)
    # the closed form of docs/faithfulness.md#training: 2.6 * NLL + 0.4 * mean_c(-log p_c)
    logp = logits.log_softmax(-1)
    closed = (2.6 * -logp[torch.arange(16), target] + 0.4 * -logp.mean(-1)).mean()
    torch.testing.assert_close(loss(logits, target), closed, rtol=1e-13, atol=0)


def test_v2_loss_is_plain_ce_and_gradients_flow():
    logits, target = _data(2)
    logits.requires_grad_(True)
    loss = build_loss("CE")
    out = loss(logits, target)
    torch.testing.assert_close(out, F.cross_entropy(logits, target))
    build_loss("ce+2lsce")(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_unknown_loss():
    with pytest.raises(ValueError, match="ce\\+2lsce"):
        build_loss("focal")
