"""Code snippets whose output the docs show: run by ``make_docs.py``, never typed by hand.

Each snippet is rendered as its code followed by what it printed, in a generated block
``<!-- generated: snippet/<key> -->``. The study notebook's demos live here.
"""

from __future__ import annotations

import contextlib
import io
import textwrap
from collections.abc import Callable

SNIPPETS: dict[str, str] = {
    "tanh": """
        import torch

        x1, x2 = torch.tensor(5.0), torch.tensor(40.0)
        print(torch.tanh(x1), torch.tanh(x2))           # nearly equal: tanh saturates
        print(1 - torch.tanh(x1) ** 2)                  # and its gradient there is ~0
    """,
    "channel-mean": """
        import torch

        X = torch.arange(27.0).reshape(1, 3, 3, 3)      # (N, C, H, W)
        print(X.mean(dim=(0, 2, 3)))                    # one mean per channel, over N, H, W
        print(X.mean(0).mean(1).mean(1))                # the same, one axis at a time
    """,
    "bn-from-scratch": """
        import torch

        import normzoo
        from normzoo import functional

        X = torch.arange(27.0).reshape(1, 3, 3, 3)
        bn = normzoo.create("bn", 3)                    # momentum 0.1, as torch.nn
        y = bn(X).detach()                              # training mode: batch statistics
        print(y[0, 0])
        print("running_mean", bn.running_mean)          # 0.9 * 0 + 0.1 * [4, 13, 22]
        print("running_var ", bn.running_var)           # 0.9 * 1 + 0.1 * unbiased var (7.5)

        # The same numbers from the from-scratch math (normzoo.functional):
        y_ref, mean, var = functional.batch_norm(
            X, torch.zeros(3), torch.ones(3), training=True, momentum=0.1
        )
        print(torch.allclose(y, y_ref, atol=1e-6), mean, var)
        # torch.nn agrees too:
        print(torch.allclose(y, torch.nn.BatchNorm2d(3)(X), atol=1e-6))
    """,
    "eval-mode": """
        import torch

        import normzoo

        X = torch.arange(27.0).reshape(1, 3, 3, 3)
        bn = normzoo.create("bn", 3)
        bn(X)                                           # one training step
        bn.eval()                                       # inference: running statistics
        print(bn(X)[0, 0].detach())                     # not the training output
    """,
    "batch-dependence": """
        import torch

        import normzoo

        torch.manual_seed(0)
        sample = torch.randn(1, 8, 4, 4)                # one fixed sample
        bn, gn = normzoo.create("bn", 8), normzoo.create("gn", 8, num_groups=4)
        for batch in (32, 8, 2):
            others = torch.randn(batch - 1, 8, 4, 4) * 3 + 1
            x = torch.cat([sample, others])
            print(f"batch {batch:2d}: BN(sample) channel-0 mean {bn(x)[0, 0].mean():+.3f}, "
                  f"GN(sample) channel-0 mean {gn(x)[0, 0].mean():+.3f}")
    """,
}


def run(code: str) -> str:
    """Execute ``code`` and return what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})
    return out.getvalue()


def render(key: str) -> str:
    """The snippet's code and its output as markdown."""
    code = textwrap.dedent(SNIPPETS[key]).strip("\n")
    return f"```python\n{code}\n```\n\nOutput:\n\n```text\n{run(code).rstrip()}\n```\n"


def generators() -> dict[str, Callable[[], str]]:
    """``snippet/<key>`` generated-block generators."""
    return {f"snippet/{key}": (lambda key=key: render(key)) for key in SNIPPETS}
