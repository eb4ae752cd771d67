"""SAM(Adam) against the algorithm of docs/faithfulness.md#training computed by hand (float64, tight tolerance)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poster.train.sam import SAM

RHO, LR, B1, B2, EPS = 0.05, 1e-2, 0.9, 0.999, 1e-8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)
        self.frozen = nn.Parameter(torch.linspace(0.5, 1.5, 8), requires_grad=False)  # used, never trained
        self.unused = nn.Parameter(torch.ones(2))  # trainable but gets no grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)) * self.frozen)


def functional_loss(ws, frozen, x, y):
    w1, b1, w2, b2 = ws
    h = torch.tanh(x @ w1.T + b1) * frozen
    return F.cross_entropy(h @ w2.T + b2, y)


def make(seed: int = 0):
    torch.manual_seed(seed)
    net = Net().double()
    batches = [(torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))) for _ in range(3)]
    return net, batches


def sam_step(net, opt, x, y):
    F.cross_entropy(net(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(net(x), y).backward()
    opt.second_step(zero_grad=True)


def hand_steps(net, batches, adaptive=False):
    """SAM by hand (docs/faithfulness.md#training): global norm, perturb, grads at perturbed weights,
    Adam from the originals."""
    ws = [p.detach().clone() for p in (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias)]
    frozen = net.frozen.detach().clone()
    m = [torch.zeros_like(w) for w in ws]
    v = [torch.zeros_like(w) for w in ws]
    for t, (x, y) in enumerate(batches, start=1):
        req = [w.clone().requires_grad_(True) for w in ws]
        g = torch.autograd.grad(functional_loss(req, frozen, x, y), req)
        if adaptive:
            norm = torch.sqrt(sum(((w.abs() * gi) ** 2).sum() for w, gi in zip(ws, g)))
            pert = [w + RHO * w * w * gi / (norm + 1e-12) for w, gi in zip(ws, g)]
        else:
            norm = torch.sqrt(sum((gi**2).sum() for gi in g))
            pert = [w + RHO * gi / (norm + 1e-12) for w, gi in zip(ws, g)]
        pert = [w.requires_grad_(True) for w in pert]
        g2 = torch.autograd.grad(functional_loss(pert, frozen, x, y), pert)
        new = []
        for i, (w, gi) in enumerate(zip(ws, g2)):
            m[i] = B1 * m[i] + (1 - B1) * gi
            v[i] = B2 * v[i] + (1 - B2) * gi * gi
            mhat = m[i] / (1 - B1**t)
            vhat = v[i] / (1 - B2**t)
            new.append(w - LR * mhat / (vhat.sqrt() + EPS))
        ws = new
    return ws


def trained(net):
    return [net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias]


@pytest.mark.parametrize("nsteps", [1, 2])
@pytest.mark.parametrize("adaptive", [False, True])
def test_matches_hand_computation(nsteps, adaptive):
    net, batches = make()
    expected = hand_steps(copy.deepcopy(net), batches[:nsteps], adaptive=adaptive)
    frozen0, unused0 = net.frozen.detach().clone(), net.unused.detach().clone()
    opt = SAM(net.parameters(), torch.optim.Adam, rho=RHO, adaptive=adaptive, lr=LR, betas=(B1, B2), eps=EPS)
    for x, y in batches[:nsteps]:
        sam_step(net, opt, x, y)
    for got, want in zip(trained(net), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-13)
    assert torch.equal(net.frozen, frozen0) and torch.equal(net.unused, unused0)


def test_first_step_perturbation_and_exact_restore():
    net, batches = make()
    x, y = batches[0]
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=0.0)
    before = [p.detach().clone() for p in net.parameters()]
    F.cross_entropy(net(x), y).backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in net.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None]))
    opt.first_step()
    for p, w, g in zip(net.parameters(), before, grads):
        if g is None or not p.requires_grad:
            assert torch.equal(p, w)
        else:
            torch.testing.assert_close(p.detach(), w + RHO * g / (norm + 1e-12), rtol=0, atol=1e-15)
    # ||e|| = rho
    e = torch.cat([(p.detach() - w).flatten() for p, w in zip(net.parameters(), before)])
    assert abs(e.norm().item() - RHO) < 1e-12
    opt.second_step()  # lr 0: weights must be bit-identical to the originals
    for p, w in zip(net.parameters(), before):
        assert torch.equal(p, w)


def test_step_closure_equals_two_steps():
    net_a, batches = make()
    net_b = copy.deepcopy(net_a)
    opt_a = SAM(net_a.parameters(), torch.optim.Adam, lr=LR)
    opt_b = SAM(net_b.parameters(), torch.optim.Adam, lr=LR)
    for x, y in batches:
        sam_step(net_a, opt_a, x, y)
        F.cross_entropy(net_b(x), y).backward()

        def closure():
            loss = F.cross_entropy(net_b(x), y)
            loss.backward()
            return loss

        loss = opt_b.step(closure)
        opt_b.zero_grad()
        assert loss.ndim == 0
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)


def test_state_dict_round_trip_keeps_adam_moments():
    net, batches = make()
    opt = SAM(net.parameters(), torch.optim.Adam, lr=LR)
    sam_step(net, opt, *batches[0])
    sd = copy.deepcopy(opt.state_dict())
    idx = [i for i, p in enumerate(net.parameters()) if p is net.fc1.weight][0]
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(sd["state"][idx])
    assert len(sd["state"]) == 4  # frozen and unused parameters have no state
    assert sd["param_groups"][0]["rho"] == 0.05

    net2 = copy.deepcopy(net)
    net3 = copy.deepcopy(net)
    opt3 = SAM(net3.parameters(), torch.optim.Adam, lr=LR)  # same weights, fresh moments
    opt2 = SAM(net2.parameters(), torch.optim.Adam, lr=123.0)  # lr comes from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]["lr"] == LR
    for x, y in batches[1:]:
        sam_step(net, opt, x, y)
        sam_step(net2, opt2, x, y)
        sam_step(net3, opt3, x, y)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    # Without the moments the trajectory differs: the round trip is what makes resume exact.
    assert not torch.allclose(net.fc1.weight, net3.fc1.weight, rtol=0, atol=1e-9)


def test_original_style_state_dict_is_accepted():
    net, batches = make()
    opt = SAM(net.parameters(), torch.optim.Adam, lr=LR)
    n_params = len(list(net.parameters()))
    old = {
        "state": {0: {"old_p": torch.zeros(8, 5, dtype=torch.float64)}},
        "param_groups": [{**{k: v for k, v in opt.param_groups[0].items() if k != "params"},
                          "params": list(range(n_params))}],
    }
    with pytest.warns(UserWarning, match="fresh state"):
        opt.load_state_dict(old)
    sam_step(net, opt, *batches[0])  # Adam initialises its state normally
    assert "exp_avg" in opt.base_optimizer.state[net.fc1.weight]


def test_scheduler_drives_base_lr_without_warning():
    net, batches = make()
    opt = SAM(net.parameters(), torch.optim.Adam, lr=4e-5)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sam_step(net, opt, *batches[0])
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(4e-5 * 0.98)


def test_no_grads_is_a_noop_and_rho_validated():
    net, _ = make()
    opt = SAM(net.parameters(), torch.optim.Adam, lr=LR)
    before = [p.detach().clone() for p in net.parameters()]
    opt.first_step()
    opt.second_step()
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), before))
    with pytest.raises(ValueError):
        SAM(net.parameters(), torch.optim.Adam, rho=-1.0)


def test_fused_adam_inside_sam_matches_foreach():
    """The trainer passes fused=True to the base Adam on CUDA; the plumbing (kwargs reaching Adam
    through SAM's shared param groups) is checked here with PyTorch's CPU fused Adam."""
    made = [make(1) for _ in range(2)]
    nets = [net for net, _ in made]
    batches = made[0][1]
    opts = [SAM(nets[0].parameters(), torch.optim.Adam, rho=0.05, lr=1e-2),
            SAM(nets[1].parameters(), torch.optim.Adam, rho=0.05, lr=1e-2, fused=True)]
    assert opts[1].base_optimizer.param_groups[0]["fused"] is True
    for x, y in batches:
        for net, opt in zip(nets, opts):
            sam_step(net, opt, x, y)
    moved = False
    for a, b, c in zip(nets[0].parameters(), nets[1].parameters(), make(1)[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        moved |= not torch.equal(a, c)
    assert moved
