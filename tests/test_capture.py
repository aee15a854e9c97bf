"""Every norm inside graph capture (``torch.compile``, ``torch.export``), under ``torch.func``
transforms and forward-mode AD, and on empty inputs.

Under capture the norms compute through torch operators with no host reads: the zoo's norms
through their reference math, ``momentum=None``'s cumulative factors and Batch Renorm's
schedule as device tensors. A host read there broke the graph (``fullgraph=True`` failed for
Batch Renorm, both EvoNorms and SwitchableNorm) or made dynamo specialize on the step count
and compile again every step (Batch Renorm, ``momentum=None``: 12 graphs in 12 steps).
"""

import copy

import pytest
import torch
from norm_testing import small_batch_kwargs
from torch import nn

import normzoo

NAMES = [n for n in normzoo.available() if n != "syncbatchnorm"]

#: Norms with running statistics, each also run with ``momentum=None``.
TRACKING = {
    "batchnorm": {},
    "batchrenorm": {},
    "ghostbatchnorm": {},
    "evonormb0": {},
    "switchablenorm": {},
    "instancenorm": {"track_running_stats": True, "affine": True},
}

#: Batch Renorm's schedule short enough that the steps below cross it: plain BN for two
#: steps, ``d_max`` reached at step 4 and ``r_max`` at step 6.
SCHEDULE = {"warmup_steps": 2, "d_max_steps": 4, "r_max_steps": 6}

CASES = [pytest.param(n, {}, id=n) for n in NAMES] + [
    pytest.param(n, {**kw, "momentum": None}, id=f"{n}-momentum_None") for n, kw in TRACKING.items()
]
#: Ghost BN's captured path folds equal virtual batches into one reduction (the tests' batch
#: of 4 in virtual batches of 2); batches of 3 and 1 take the reference's loop.
CASES += [
    pytest.param("ghostbatchnorm", {"virtual_batch_size": 3}, id="ghostbatchnorm-uneven"),
    pytest.param(
        "ghostbatchnorm",
        {"virtual_batch_size": 3, "momentum": None},
        id="ghostbatchnorm-uneven-momentum_None",
    ),
]


def _build(name: str, kwargs: dict, channels: int = 6) -> nn.Module:
    kwargs = {**small_batch_kwargs(name), **kwargs}
    if name == "batchrenorm":
        kwargs = {**SCHEDULE, **kwargs}
    if name == "instancenorm" and "track_running_stats" not in kwargs:
        kwargs["affine"] = True
    norm = normzoo.create(name, channels, **kwargs)
    with torch.no_grad():  # parameters away from their initial values
        for p in norm.parameters():
            p.add_(torch.rand_like(p) * 0.5)
    return norm


def _assert_same_state(got: nn.Module, want: nn.Module, step: int) -> None:
    for (key, a), b in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{key} after step {step}")


def _assert_same_step(
    got: nn.Module, want: nn.Module, x_got: torch.Tensor, x_want: torch.Tensor, step: int
) -> None:
    """The input's and every parameter's gradient, and every buffer, after a step."""
    torch.testing.assert_close(x_got.grad, x_want.grad, atol=1e-5, rtol=1e-5)
    for (key, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=key)
    _assert_same_state(got, want, step)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_compiles_whole_and_once(name, kwargs, device):
    """``torch.compile(norm, fullgraph=True)`` over 8 training steps (Batch Renorm's schedule
    crossed, ``num_batches_tracked`` moving) compiles one graph, with no recompile, and
    computes what the eager module computes: outputs, input and parameter gradients and every
    buffer after each step, then eval. AOTAutograd traces the backward too (backend
    ``aot_eager``: inductor's code generation is not what is tested here)."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    eager = _build(name, kwargs).to(device)
    norm = copy.deepcopy(eager)
    compiled = torch.compile(norm, fullgraph=True, backend="aot_eager")
    # only the compiled module's calls may not recompile: the eager one's CUDA paths compile
    # functions of their own (normzoo.norms._gpu), which recompile by design
    no_recompile = torch._dynamo.config.patch(error_on_recompile=True)
    for step in range(8):
        x = torch.randn(4, 6, 5, 5, device=device) * 2 + 1
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye = eager(xe)
        with no_recompile:
            yc = compiled(xc)
        torch.testing.assert_close(yc, ye, atol=1e-5, rtol=1e-5, msg=f"y at step {step}")
        g = torch.randn_like(ye)
        ye.backward(g)
        with no_recompile:
            yc.backward(g)
        _assert_same_step(norm, eager, xc, xe, step)
    eager.eval()
    norm.eval()
    x = torch.randn(4, 6, 5, 5, device=device)
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)
    if name == "batchrenorm":  # the schedule was crossed: the limits reached their ends
        assert eager.current_limits() == (eager.r_max, eager.d_max)


@pytest.mark.parametrize(("name", "kwargs"), [c for c in CASES if "uneven" not in c.id])
def test_one_graph_for_every_batch_size_with_dynamic_shapes(name, kwargs):
    """``torch.compile(dynamic=True)``: training steps on batches of 4, 6, 8 and 12 compile
    one graph (the batch size symbolic) and compute what eager computes, buffers included.
    Ghost BN's virtual-batch count specialized on the batch size before (``math.ceil`` of a
    division; with a fixed momentum, Python float arithmetic on it also tripped a dynamo
    guard bug). Uneven virtual batches take the reference's loop over them, unrolled: one
    graph per number of virtual batches, by design."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    eager = _build(name, kwargs)
    norm = copy.deepcopy(eager)
    compiled = torch.compile(norm, fullgraph=True, dynamic=True, backend="aot_eager")
    for i, n in enumerate((4, 6, 8, 12)):
        x = torch.randn(n, 6, 5, 5) * 2 + 1
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye = eager(xe)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            yc = compiled(xc)
        torch.testing.assert_close(yc, ye, atol=1e-5, rtol=1e-5, msg=f"batch {n}")
        ye.sum().backward()
        yc.sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-5)
        _assert_same_state(norm, eager, i)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["batchrenorm", "evonormb0", "evonorms0", "switchablenorm"])
def test_inductor_compiles_the_zoo_inside_a_model(name):
    """The norms that broke the graph, compiled with inductor inside a model (one training
    step with momentum=None where the norm tracks, then eval) against eager."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    kwargs = {"momentum": None} if name in TRACKING else {}
    model = nn.Sequential(nn.Conv2d(3, 6, 3), _build(name, kwargs), nn.ReLU())
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 9, 9)
    y, yr = compiled(x), ref(x)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad, atol=1e-4, rtol=1e-4)
    _assert_same_state(model, ref, 0)
    model.eval()
    ref.eval()
    torch.testing.assert_close(compiled(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_exports_in_eval(name):
    """``torch.export`` of every norm in eval (FRN and EvoNorm-B0 failed: their hand-written
    autograd functions write with ``out=``, which export's tracing refuses); the exported
    program computes what the module computes, on a batch size it was not traced with."""
    torch.manual_seed(0)
    norm = _build(name, {}).eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(norm, (torch.randn(4, 6, 5, 5),), dynamic_shapes=({0: batch},))
    x = torch.randn(7, 6, 5, 5)
    torch.testing.assert_close(program.module()(x), norm(x), atol=1e-5, rtol=1e-5)


def _count_kernel_calls(monkeypatch, names: tuple[str, ...]) -> list[str]:
    """The ``zoo_kernels`` functions ``names`` called, in order."""
    from normzoo._native import zoo_kernels

    calls: list[str] = []
    for fn in names:
        real = getattr(zoo_kernels, fn)
        monkeypatch.setattr(
            zoo_kernels, fn, lambda *a, _fn=fn, _real=real: calls.append(_fn) or _real(*a)
        )
    return calls


GRAPH_OPS = {"evonorms0": "s0", "switchablenorm": "switchable"}


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("name", list(GRAPH_OPS))
def test_compiled_zoo_runs_the_native_kernels_on_the_cpu(name, fmt, monkeypatch):
    """``torch.compile`` on the CPU: EvoNorm-S0's and SwitchableNorm's forward and backward
    are the native kernels as custom operators in the graph (one call each per step, no graph
    break, no recompile), where the reference math compiled by inductor measured slower than
    the eager kernels; the same outputs, gradients, parameter gradients and running
    statistics as the eager module, in either layout, then eval."""
    from normzoo.norms import _graph_ops

    if _graph_ops._s0_op is None:
        pytest.skip("torch.library.custom_op needs torch >= 2.4")
    torch.manual_seed(0)
    torch._dynamo.reset()
    eager = _build(name, {}, channels=8)
    norm = copy.deepcopy(eager)
    fwd, bwd = f"{GRAPH_OPS[name]}_forward", f"{GRAPH_OPS[name]}_backward"
    calls = _count_kernel_calls(monkeypatch, (fwd, bwd))
    compiled = torch.compile(norm, fullgraph=True, backend="aot_eager")
    for step in range(3):
        x = (torch.randn(4, 8, 5, 5) * 2 + 1).contiguous(memory_format=fmt)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye = eager(xe)
        g = torch.randn_like(ye)
        ye.backward(g)
        calls.clear()
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            yc = compiled(xc)
        assert calls == [fwd]
        yc.backward(g)
        assert calls == [fwd, bwd]
        assert yc.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(yc, ye, atol=1e-5, rtol=1e-5)
        _assert_same_step(norm, eager, xc, xe, step)
    eager.eval()
    norm.eval()
    calls.clear()
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=fmt)
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)
    assert calls[:1] == [fwd]


@pytest.mark.parametrize("name", list(GRAPH_OPS))
def test_exported_zoo_keeps_the_reference_math(name):
    """``torch.export`` does not take the compiled path's custom operators (an exported
    program would need normzoo to run them): the reference math's torch operators only."""
    norm = _build(name, {}).eval()
    program = torch.export.export(norm, (torch.randn(4, 6, 5, 5),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert targets and not any("normzoo" in t for t in targets), targets


EMPTY_SHAPES = [(0, 6, 5, 5), (4, 6, 0, 5)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=["no_samples", "no_positions"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_empty_input(name, kwargs, training, shape):
    """An input with no elements gives an empty output shaped and laid out as the input, a
    zero gradient on every parameter (not ``None``, as ``torch.nn``'s norms give), running
    statistics untouched, and in training one more tracked batch (BatchNorm's count, as
    ``torch.nn.BatchNorm2d`` counts it; Ghost BN counts the virtual batches, none for 0
    samples). Before, most of the zoo failed on it (reshape errors, an ``IndexError`` in
    InstanceNorm's check) or, in the reference math, wrote NaN into the running statistics."""
    norm = _build(name, kwargs).train(training)
    before = copy.deepcopy(norm.state_dict())
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
        y = norm(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.is_contiguous(memory_format=fmt)
        y.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape
        for key, p in norm.named_parameters():
            assert p.grad is not None and not p.grad.any(), key
    after = norm.state_dict()
    for key, value in before.items():
        if key.endswith("num_batches_tracked"):
            counted = 2 if training else 0  # two calls
            if name == "ghostbatchnorm":
                counted *= -(-shape[0] // norm.virtual_batch_size)
            assert int(after[key]) == int(value) + counted, key
        else:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=["no_samples", "no_positions"])
@pytest.mark.parametrize(
    ("name", "make_torch"),
    [
        ("batchnorm", lambda shape: nn.BatchNorm2d(6)),
        ("groupnorm", lambda shape: nn.GroupNorm(3, 6)),
        ("layernorm", lambda shape: nn.LayerNorm(list(shape[1:]))),
    ],
)
def test_empty_input_as_torch(name, make_torch, shape):
    """Where torch.nn has the norm (it accepts empty inputs), the same output shape, zero
    parameter gradients and the same buffers (BatchNorm counts the batch in training). One
    difference: torch's GroupNorm gives a NaN weight gradient on samples with no
    positions, normzoo's zeros."""
    kwargs = {"num_groups": 3} if name == "groupnorm" else {}
    ours, ref = normzoo.create(name, 6, **kwargs), make_torch(shape)
    for mode in (True, False):
        ours.train(mode)
        ref.train(mode)
        x = torch.randn(shape, requires_grad=True)
        y, yr = ours(x), ref(x)
        assert y.shape == yr.shape
        y.sum().backward()
        yr.sum().backward()
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            assert p.grad is not None and not p.grad.any()
            if name == "groupnorm" and shape[0] > 0 and q is ref.weight:
                assert q.grad.isnan().all()  # torch's: NaN (0 / 0 positions)
            else:
                assert not q.grad.any()
    for key, value in ref.state_dict().items():
        if key in ("weight", "bias") and name == "layernorm":
            continue  # torch's are (6, H, W), normzoo's per channel
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)


def _func_cases() -> list:
    """The norms with parameters to differentiate."""
    return [pytest.param(n, id=n) for n in NAMES if n not in ("identity", "frozenbatchnorm")]


@pytest.mark.parametrize("name", _func_cases())
def test_torch_func_grad_in_training(name):
    """``torch.func.grad`` of a loss through ``functional_call`` (training mode, the buffers
    passed in as torch.func asks for torch's BatchNorm too) gives the parameter gradients
    that autograd gives the module, and updates the passed buffers as the module updates its
    own. Before, the zoo's fast paths failed there (Python autograd functions without
    ``setup_context``, C++ autograd functions: neither usable under a transform)."""
    torch.manual_seed(0)
    norm = _build(name, {})
    ref = copy.deepcopy(norm)
    params = {k: v.detach().clone() for k, v in norm.named_parameters()}
    buffers = {k: v.clone() for k, v in norm.named_buffers()}
    x = torch.randn(4, 6, 5, 5) * 2 + 1

    def loss(p: dict, b: dict) -> torch.Tensor:
        return torch.func.functional_call(norm, (p, b), (x,)).square().mean()

    grads = torch.func.grad(loss)(params, buffers)
    ref(x).square().mean().backward()
    for key, p in ref.named_parameters():
        torch.testing.assert_close(grads[key], p.grad, atol=1e-5, rtol=1e-5, msg=key)
    for key, b in ref.named_buffers():
        torch.testing.assert_close(buffers[key], b, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("name", _func_cases())
def test_torch_func_per_sample_gradients_in_eval(name):
    """Per-sample gradients, ``vmap(grad(loss), in_dims=(None, 0))``, in eval (where no norm
    mixes samples), equal one autograd pass per sample."""
    torch.manual_seed(0)
    norm = _build(name, {}).eval()
    params = {k: v.detach().clone() for k, v in norm.named_parameters()}
    xs = torch.randn(3, 2, 6, 5, 5)

    def loss(p: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(norm, p, (x,)).square().mean()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i, x in enumerate(xs):
        ref = copy.deepcopy(norm)
        ref(x).square().mean().backward()
        for key, p in ref.named_parameters():
            torch.testing.assert_close(per_sample[key][i], p.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_mode_ad(name, training):
    """Forward-mode AD (``torch.autograd.forward_ad``): the tangent of every norm's output
    equals the Jacobian-vector product from reverse mode (``torch.autograd.functional.jvp``,
    the double-backward trick) on a copy, and the module's running statistics update as in
    a plain call. Before, the zoo's fast paths failed there (autograd functions without
    ``jvp``)."""
    torch.manual_seed(0)
    norm = _build(name, {}).train(training)
    ref = copy.deepcopy(norm)
    x, t = torch.randn(4, 6, 5, 5) * 2 + 1, torch.randn(4, 6, 5, 5)
    want = torch.autograd.functional.jvp(lambda v: copy.deepcopy(norm)(v), x, t)[1]
    with torch.autograd.forward_ad.dual_level():
        dual = norm(torch.autograd.forward_ad.make_dual(x, t))
        tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
    torch.testing.assert_close(tangent, want, atol=1e-4, rtol=1e-4)
    ref(x)
    _assert_same_state(norm, ref, 0)
