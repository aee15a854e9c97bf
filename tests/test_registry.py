"""The registry: names, aliases, torch class names, errors, and real entry-point plugins."""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from norm_testing import small_batch_kwargs

import normzoo
from normzoo import norms

PLUGIN_SRC = Path(__file__).parent / "plugin_dist"


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("batchnorm", norms.BatchNorm),
        ("bn", norms.BatchNorm),
        ("Batch_Norm", norms.BatchNorm),
        ("batch-norm", norms.BatchNorm),
        ("BatchNorm1d", norms.BatchNorm),
        ("BatchNorm2d", norms.BatchNorm),
        ("BatchNorm3d", norms.BatchNorm),
        ("layernorm", norms.LayerNorm),
        ("LN", norms.LayerNorm),
        ("LayerNorm", norms.LayerNorm),
        ("instancenorm", norms.InstanceNorm),
        ("in", norms.InstanceNorm),
        ("InstanceNorm2d", norms.InstanceNorm),
        ("groupnorm", norms.GroupNorm),
        ("gn", norms.GroupNorm),
        ("GroupNorm", norms.GroupNorm),
        ("identity", norms.Identity),
        ("none", norms.Identity),
        ("Identity", norms.Identity),
    ],
)
def test_lookup(name, cls):
    assert normzoo.get(name) is cls


def test_available_lists_canonical_names_sorted():
    names = normzoo.available()
    assert names == sorted(names)
    assert {"batchnorm", "layernorm", "instancenorm", "groupnorm", "identity"} <= set(names)
    assert "bn" not in names


def test_create_accepts_names_classes_and_partials():
    assert isinstance(normzoo.create("gn", 64), norms.GroupNorm)
    assert normzoo.create(norms.LayerNorm, 8).num_features == 8
    gn = normzoo.create(functools.partial(norms.GroupNorm, num_groups=4), 16)
    assert gn.num_groups == 4
    assert normzoo.create("bn", 8, momentum=None).momentum is None


# The constructor arguments a norm needs for the batch of 4 below (GhostBN's default virtual
# batch of 32 is larger than that batch, which is an error).


def test_every_norm_has_the_shared_interface():
    for name in normzoo.available():
        layer = normzoo.create(name, 8, **small_batch_kwargs(name))
        assert isinstance(layer, normzoo.Norm)
        assert layer.num_features == 8
        assert set(layer.statistics_per) <= set(norms.AXES)
        assert set(layer.reduces_over) <= set(norms.AXES)
        assert isinstance(layer.uses_batch_stats, bool)
        if name != "identity":
            assert layer.affine and layer.weight.shape == layer.bias.shape == (8,)
        for spatial in range(layer.min_spatial_dims, layer.max_spatial_dims + 1):
            x = torch.randn(4, 8, *([3] * spatial))
            assert layer(x).shape == x.shape


def test_attributes_follow_the_design_table():
    table = {
        "batchnorm": (("channel",), ("batch", "spatial"), True),
        "layernorm": (("batch",), ("channel", "spatial"), False),
        "instancenorm": (("batch", "channel"), ("spatial",), False),
        "groupnorm": (("batch", "group"), ("channel", "spatial"), False),
    }
    for name, (per, over, batch) in table.items():
        cls = normzoo.get(name)
        assert (cls.statistics_per, cls.reduces_over, cls.uses_batch_stats) == (per, over, batch)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError) as info:
        normzoo.get("groupnrom")
    message = str(info.value)
    assert "'groupnrom'" in message and "did you mean 'groupnorm'" in message
    assert "batchnorm" in message  # lists the registered ones
    with pytest.raises(KeyError, match="unknown norm"):
        normzoo.create("nonsense", 4)


def test_create_rejects_unknown_kwargs_listing_accepted_ones():
    with pytest.raises(TypeError, match=r"num_groups.*accepts: eps, momentum"):
        normzoo.create("bn", 8, num_groups=4)


def test_register_rejects_taken_names_and_non_norms():
    with pytest.raises(ValueError, match="taken"):

        @normzoo.register("GroupNorm")
        class A(normzoo.Norm):
            pass

    with pytest.raises(ValueError, match="'bn'.*taken"):

        @normzoo.register("freshname_xyz", aliases=("bn",))
        class B(normzoo.Norm):
            pass

    assert "freshname_xyz" not in normzoo.available()  # nothing half-registered
    with pytest.raises(TypeError, match="subclass of normzoo.Norm"):
        normzoo.register("notanorm")(torch.nn.ReLU)


@pytest.mark.usefixtures("isolated_registry")
def test_register_and_create_a_custom_norm():
    @normzoo.register("test_scale_norm", aliases=("tsn",))
    class ScaleNorm(normzoo.Norm):
        def __init__(self, num_features, factor=3.0):
            super().__init__(num_features, affine=False)
            self.factor = factor

        def _forward(self, x):
            return x * self.factor

    assert normzoo.get("TSN") is ScaleNorm
    assert "testscalenorm" in normzoo.available()
    layer = normzoo.create("tsn", 2, factor=2.0)
    torch.testing.assert_close(layer(torch.ones(1, 2)), torch.full((1, 2), 2.0))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The dummy plugin distribution, really installed (pip, not editable) into a folder."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(PLUGIN_SRC),
        ],
        check=True,
        capture_output=True,
    )
    assert list(site.glob("normzoo_dummy_plugin-*.dist-info/entry_points.txt"))
    return site


def _run_with_site(site, code):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc


def test_plugins_load_lazily_and_broken_ones_only_warn(plugin_site):
    proc = _run_with_site(
        plugin_site,
        """
        import json, sys, torch, normzoo
        before = "normzoo_dummy_plugin" in sys.modules
        names = normzoo.available()
        layer = normzoo.create("dummy-norm", 3, scale=5.0)
        out = layer(torch.ones(2, 3)).tolist()
        print(json.dumps({
            "imported_before_lookup": before,
            "names": names,
            "out": out,
            "selfreg": normzoo.get("SRN").__name__,
            "plugin": normzoo.info("dummynorm").plugin,
            "gn_still_builtin": normzoo.get("gn").__module__,
        }))
        """,
    )
    result = json.loads(proc.stdout)
    assert result["imported_before_lookup"] is False
    assert {"dummynorm", "selfregistered", "batchnorm", "groupnorm"} <= set(result["names"])
    assert "broken" not in result["names"]
    assert result["out"] == [[5.0] * 3] * 2
    assert result["selfreg"] == "SelfRegistered"
    assert result["plugin"] == "dummynorm"
    assert result["gn_still_builtin"] == "normzoo.norms.group"
    assert "plugin 'broken'" in proc.stderr and "broken on purpose" in proc.stderr
    assert "plugin 'thief'" in proc.stderr and "taken" in proc.stderr


def test_cli_lists_plugins(plugin_site):
    proc = _run_with_site(plugin_site, "from normzoo.cli import main; main(['list'])")
    assert "dummynorm" in proc.stdout and "scale=2.0" in proc.stdout


def test_import_normzoo_is_light():
    code = (
        "import sys, normzoo; normzoo.create('bn', 3); normzoo.available(); "
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', "
        "'matplotlib', 'torchmetrics', 'sklearn') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
