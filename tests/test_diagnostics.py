"""The diagnostics callback: ICS, smoothness and pre-activation statistics (Santurkar et al.)."""

import csv
import math
import types

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")
import lightning.pytorch as pl

import normzoo
from normzoo.diagnostics import (
    SATURATION,
    Diagnostics,
    activation_stats,
    ics,
    landscape,
    weight_layers,
)
from normzoo.models import ConvNet2d
from normzoo.norms.base import Norm
from normzoo.norms.noisy import NoisyBatchNorm


def tanh_mlp(norm: str = "bn", width: int = 16, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = 8
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), normzoo.create(norm, width), nn.Tanh()]
        fan_in = width
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers)


def ce_loss(model: nn.Module):
    return lambda batch: nn.functional.cross_entropy(model(batch[0]), batch[1])


def batch(n: int = 32):
    return torch.randn(n, 8) * 3, torch.randint(0, 3, (n,))


def test_ics_is_zero_for_the_first_layer_and_positive_after_it():
    model = tanh_mlp("bn")
    rows = ics(model, ce_loss(model), batch(), lr=0.5)
    assert [r["layer"] for r in rows] == [name for name, _ in weight_layers(model)]
    assert len(rows) == 4
    # Nothing precedes the first layer: G' is G, exactly (same batch, same seed).
    assert rows[0]["ics_l2"] == 0.0
    assert rows[0]["ics_cos"] == pytest.approx(1.0)
    for r in rows[1:]:
        assert r["ics_l2"] > 0
        assert -1.0 <= r["ics_cos"] < 1.0


def test_measurements_leave_parameters_and_running_stats_unchanged():
    model = tanh_mlp("bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ics(model, ce_loss(model), batch(), lr=0.1)
    landscape(model, ce_loss(model), batch(), lr=0.1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)


def test_landscape_of_a_quadratic_recovers_its_curvature():
    # L(w) = a/2 w^2: the gradient changes by a * eta * g over a step of eta * g, so the
    # effective beta-smoothness is exactly a; the loss along -g is a/2 (w - eta a w)^2.
    a, w0, lr = 3.0, 2.0, 0.1
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w0)

    def loss(_batch):
        return 0.5 * a * (model.weight**2).sum()

    out = landscape(model, loss, None, lr=lr, steps=(1.0, 2.0))
    assert out["beta_smoothness"] == pytest.approx(a, rel=1e-5)
    assert out["grad_norm"] == pytest.approx(a * w0)
    g = a * w0
    losses = [0.5 * a * (w0 - m * lr * g) ** 2 for m in (0.0, 1.0, 2.0)]
    assert out["loss_variation"] == pytest.approx(max(losses) - min(losses), rel=1e-5)
    assert out["grad_predictiveness"] == pytest.approx(a * 2 * lr * g, rel=1e-5)


def test_activation_stats_counts_saturated_inputs():
    x = torch.tensor([-10.0, -1.0, 0.0, 0.5, 3.0, 40.0, 1.0, 2.0])
    row = activation_stats(x)
    assert row["saturated_frac"] == pytest.approx(3 / 8)  # -10, 3, 40 beyond atanh(0.99)
    assert row["negative_frac"] == pytest.approx(2 / 8)
    assert row["q50"] == pytest.approx(float(x.median()), abs=0.6)
    assert math.tanh(SATURATION) == pytest.approx(0.99)


class TinyModule(pl.LightningModule):
    def __init__(self, norm: str = "bn") -> None:
        super().__init__()
        self.net = tanh_mlp(norm)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def train(module, x, y, callbacks, tmp_path, steps: int = 5, shuffle: bool = False):
    """``steps`` steps of ``module`` on batches of 16 of ``(x, y)``, quietly, on the CPU."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=shuffle
    )
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    return module


def fit(callbacks, tmp_path, steps: int = 5) -> TinyModule:
    torch.manual_seed(0)
    x, y = batch(64)
    return train(TinyModule(), x, y, callbacks, tmp_path, steps, shuffle=True)


def test_callback_writes_csvs_and_does_not_change_the_run(tmp_path):
    diag = Diagnostics(every_n_steps=2, out_dir=tmp_path / "diag")
    with_diag = fit([diag], tmp_path)
    without = fit([], tmp_path)
    expected = without.state_dict()
    for k, v in with_diag.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=k)

    def read(stem):
        with (tmp_path / "diag" / f"diagnostics_{stem}.csv").open() as f:
            return list(csv.DictReader(f))

    ics_rows = read("ics")
    assert sorted({int(r["step"]) for r in ics_rows}) == [0, 2, 4]
    assert len(ics_rows) == 3 * 4  # 3 measurements x 4 weight layers
    assert {int(r["step"]) for r in read("landscape")} == {0, 2, 4}
    acts = read("activations")
    assert len(acts) == 3 * 3  # 3 measurements x 3 tanh layers
    assert {r["layer"] for r in acts} == {"net.2", "net.5", "net.8"}
    assert all(0.0 <= float(r["saturated_frac"]) <= 1.0 for r in acts)


class ConvModule(TinyModule):
    """TinyModule's training on the training system's ConvNet, its ReLUs fused into the norms
    or not."""

    def __init__(self, norm: str, fuse_activation: bool | str) -> None:
        pl.LightningModule.__init__(self)
        self.net = ConvNet2d(
            (1, 8, 8), 3, norm=norm, widths=(4, 8), convs_per_stage=1,
            fuse_activation=fuse_activation,
        )  # fmt: skip


def fit_conv(norm, fuse, callbacks, tmp_path) -> ConvModule:
    torch.manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8) * 2 + 1, torch.randint(0, 3, (48,))
    return train(ConvModule(norm, fuse), x, y, callbacks, tmp_path)


@pytest.mark.parametrize("norm", ["bn", "gn", "ln", "in"])
def test_activation_diagnostics_see_inside_a_norm_that_applies_its_relu(norm, tmp_path):
    """A fused norm + ReLU (the models' default) holds the activation's input: on recorded
    steps it runs without the ReLU, and the hook records its output and applies the ReLU.
    The rows are those of the unfused model (under the norm's name), the run is the run
    without diagnostics to the bit, and the norms get their ReLU back."""
    kw = {"ics": False, "landscape": False, "every_n_steps": 2}
    fused_diag = Diagnostics(out_dir=tmp_path / "fused", **kw)
    fused = fit_conv(norm, "auto", [fused_diag], tmp_path)
    plain_diag = Diagnostics(out_dir=tmp_path / "plain", **kw)
    plain = fit_conv(norm, False, [plain_diag], tmp_path)
    alone = fit_conv(norm, "auto", [], tmp_path)
    norms = [n for n, m in fused.named_modules() if isinstance(m, Norm)]
    assert all(fused.get_submodule(n).activation == "relu" for n in norms)
    assert not any(isinstance(m, nn.ReLU) for m in fused.modules())
    for k, v in alone.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(plain.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # the unfused model's ReLU follows its norm: net.features.<i> -> net.features.<i + 1>
    renamed = []
    for r in fused_diag.activation_rows:
        prefix, index = r["layer"].rsplit(".", 1)
        renamed.append({**r, "layer": f"{prefix}.{int(index) + 1}"})
    assert {r["layer"] for r in fused_diag.activation_rows} == set(norms)
    assert len(renamed) == 3 * 2  # steps 0, 2, 4 x two norms
    assert renamed == plain_diag.activation_rows
    assert fused_diag._unfused == {} and fused_diag._handles == []


def test_fused_norms_get_their_relu_back_after_an_error():
    model = nn.Sequential(nn.Linear(8, 16), normzoo.create("bn", 16, activation="relu"))
    diag = Diagnostics(ics=False, landscape=False)
    diag.on_fit_start(None, model)
    diag._recording = 0
    diag._unfuse()
    assert model[1].activation is None
    y = model(torch.randn(4, 8))
    assert (y >= 0).all() and len(diag.activation_rows) == 1
    assert diag.activation_rows[0]["negative_frac"] > 0  # the norm's output, before the ReLU
    diag.on_exception(types.SimpleNamespace(is_global_zero=False), model, RuntimeError())
    assert model[1].activation == "relu" and not model[1]._forward_hooks


def test_noisy_batchnorm_adds_time_varying_noise_in_training_only():
    layer = NoisyBatchNorm(4, noise_mean=1.0, noise_scale=2.0)
    x = torch.randn(16, 4, 5)
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # redrawn at every step
    clean = normzoo.create("bn", 4)(x)
    assert (a.mean(dim=(0, 2)) - clean.mean(dim=(0, 2))).abs().max() > 0.01
    layer.eval()
    bn = normzoo.create("bn", 4)
    bn.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), bn.eval()(x))
    with pytest.raises(ValueError, match="noise_scale"):
        NoisyBatchNorm(4, noise_scale=0.5)


def test_batch_stats_accuracy_uses_each_batch_s_statistics_and_restores_the_model():
    from normzoo.diagnostics import batch_stats_accuracy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), normzoo.create("bn", 4), nn.Dropout(0.5))
    model.eval()
    # Class = whether feature 0 is above its batch mean. A BN in train mode with a zero
    # weight on the other features scores this perfectly per batch; eval mode (running mean
    # 0) does not when every batch is shifted.
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    x = torch.randn(64, 4) + 5.0
    logits_target = (x[:, 0] > x[:, 0].reshape(8, 8).mean(dim=1).repeat_interleave(8)).long()
    head = nn.Sequential(model, nn.Linear(4, 2))
    with torch.no_grad():
        head[1].weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
        head[1].bias.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc, n = batch_stats_accuracy(
        head, [(x[:32], logits_target[:32]), (x[32:], logits_target[32:])], 8
    )
    assert n == 64 and acc == 1.0
    assert not model.training and not model[1].training  # modes restored
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
