"""A one-minute tour of the study notebook's points, run with ``python -m normzoo.demo``."""

from __future__ import annotations

import torch

import normzoo


def main() -> None:
    x1, x2 = torch.tensor(5.0), torch.tensor(40.0)
    print(
        f"tanh(5) = {torch.tanh(x1):.4f}, tanh(40) = {torch.tanh(x2):.4f}: "
        "inputs in the saturated range look alike, so normalize between layers."
    )

    x = torch.arange(27.0).reshape(1, 3, 3, 3)
    bn = normzoo.create("bn", 3)
    y = bn(x)
    print(
        "\nBatchNorm of arange(27).reshape(1, 3, 3, 3), first row:",
        [round(v, 4) for v in y[0, 0, 0].tolist()],
    )
    print("running_mean after one step:", [round(v, 4) for v in bn.running_mean.tolist()])
    print("running_var (unbiased) after one step:", [round(v, 4) for v in bn.running_var.tolist()])

    bn.eval()
    print(
        "eval mode uses the running statistics; first row now:",
        [round(v, 4) for v in bn(x)[0, 0, 0].tolist()],
    )

    torch.manual_seed(0)
    print(
        "\nMean of one fixed sample's normalized channel 0 as the batch around it shrinks "
        "(BatchNorm depends on the batch, GroupNorm does not):"
    )
    sample = torch.randn(1, 8, 4, 4)
    for batch in (32, 8, 2):
        others = torch.randn(batch - 1, 8, 4, 4) * 3 + 1
        batch_x = torch.cat([sample, others])
        bn_out = normzoo.create("bn", 8)(batch_x)[0, 0]
        gn_out = normzoo.create("gn", 8, num_groups=4)(batch_x)[0, 0]
        print(f"  batch {batch:2d}: BN mean {bn_out.mean():+.3f}   GN mean {gn_out.mean():+.3f}")
    print("\nRegistered norms:", ", ".join(normzoo.available()), "(see `normzoo list`)")


if __name__ == "__main__":
    main()
