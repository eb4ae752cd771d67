"""Run under torchrun by test_trainer.py: SAM steps of a small model under DDP (Gloo, CPU).

Each rank takes its interleaved half of one global batch (as EpochSampler shares it); rank 0
saves the parameters after the steps.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn


def build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 5))


def global_batches(steps: int = 2, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 12, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(steps)]


def main(out: str) -> None:
    from poster.train.losses import build_loss
    from poster.train.sam import SAM
    from poster.train.sam import sam_train_step

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = nn.parallel.DistributedDataParallel(build())
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)
    loss_fn = build_loss("ce+2lsce")
    for x, y in global_batches():
        sam_train_step(model, opt, loss_fn, x[rank::world], y[rank::world])
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.barrier()  # nobody tears Gloo down while another rank still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
