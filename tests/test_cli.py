import subprocess
import sys

from normzoo.cli import main, registry_rows


def test_list_prints_every_norm_with_its_axes_and_defaults(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("batchnorm", "groupnorm", "layernorm", "instancenorm", "identity"):
        assert name in out
    rows = {r["name"]: r for r in registry_rows()}
    assert rows["batchnorm"]["batch stats"] == "yes"
    assert rows["batchnorm"]["reduced over"] == "batch, spatial"
    assert "momentum=0.1" in rows["batchnorm"]["parameters (defaults)"]
    assert "num_groups=None" in rows["groupnorm"]["parameters (defaults)"]
    assert rows["groupnorm"]["aliases"] == "gn"


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "normzoo.cli", "list"], capture_output=True, text=True, check=True
    )
    assert "batchnorm" in out.stdout


def test_help_describes_the_command_in_whole_sentences():
    from normzoo.cli import build_parser

    description = build_parser().description
    assert description.endswith(".") and "subcommands other modules add" in description
    assert "``" not in description  # reStructuredText quotes shown as Markdown's


def test_bench_times_the_norms_on_one_input_fastest_first(capsys, tmp_path):
    """``normzoo bench``: each named norm (aliases too, each norm once) timed against torch.nn
    and BatchNorm on one input; a table sorted by fwd+bwd time, the rows in the JSON; a norm
    with no form for the input (InstanceNorm on tokens) or that refuses it (Ghost BN's virtual
    batch larger than the batch) is listed with the reason, not timed."""
    import json

    out_json = tmp_path / "rows.json"
    args = ["bench", "gn", "ln", "groupnorm", "bn", "--shape", "8,16,6,6", "--channels-last",
            "--repeats", "2", "--warmup", "1", "--json", str(out_json)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "shape (8, 16, 6, 6) float32 channels_last; medians of 2 rounds" in out
    rows = json.loads(out_json.read_text())
    assert sorted(r["norm"] for r in rows) == ["batchnorm", "groupnorm", "layernorm"]
    assert all(r["format"] == "channels_last" and r["channels_last_kept"] for r in rows)
    order = [r["norm"] for r in sorted(rows, key=lambda r: r["fwdbwd_ms"])]
    lines = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert lines[0] == "norm" and lines[2:] == order  # (header, rule, then fastest first)
    gn = next(r for r in rows if r["norm"] == "groupnorm")
    assert f"| {gn['fwdbwd_ms']:.3f} " in out and gn["torch_fwdbwd_ms"] > 0
    assert main(["bench", "in", "gbn", "rmsnorm", "--shape", "8,16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| rmsnorm " in out and "\nnot timed:\n- instancenorm: no token form\n" in out
    assert "- ghostbatchnorm (8, 16): ValueError: GhostBatchNorm: virtual_batch_size=32" in out
    assert "skip " not in out  # (said once, in the list)


def test_bench_refuses_bad_arguments_before_timing(capsys):
    assert main(["bench", "grupnorm"]) == 2
    assert "did you mean 'groupnorm'" in capsys.readouterr().err
    assert main(["bench", "gn", "--device", "gpu"]) == 2
    assert "--device 'gpu'" in capsys.readouterr().err
    assert main(["bench", "gn", "--shape", "8,16", "--channels-last"]) == 2
    assert "--channels-last takes a 4-d shape" in capsys.readouterr().err
    assert main(["bench", "gn", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    for bad in ("8", "8,x", "8,0,4"):
        try:
            main(["bench", "gn", "--shape", bad])
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"--shape {bad} accepted")
        assert "a shape is N,C or N,C,H,W" in capsys.readouterr().err


def test_bench_set_passes_options_to_the_norms_that_take_them(capsys, tmp_path):
    """``--set KEY=VALUE`` goes to every named norm that accepts it (a Python literal where it
    parses as one): GroupNorm's groups reach its torch.nn equivalent too, Ghost BN's virtual
    batch size lets it take a batch of 16; a value the norm refuses is reported in its own
    words; a key no named norm takes, or an item without ``=``, exits 2 before timing."""
    import json

    out_json = tmp_path / "rows.json"
    args = ["bench", "gn", "gbn", "bn", "--shape", "16,32,4,4", "--set", "num_groups=8",
            "--set", "virtual_batch_size=8", "--repeats", "1", "--json", str(out_json)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "; num_groups=8 (groupnorm); virtual_batch_size=8 (ghostbatchnorm)" in out
    rows = {r["norm"]: r for r in json.loads(out_json.read_text())}
    assert sorted(rows) == ["batchnorm", "ghostbatchnorm", "groupnorm"]  # gbn: 16 = 2 x 8
    assert rows["groupnorm"]["options"] == {"num_groups": 8} and rows["batchnorm"]["options"] == {}
    from normzoo.bench import make_norm, torch_equivalent

    gn = make_norm("gn", 32, False, options={"num_groups": 8, "virtual_batch_size": 8})
    assert gn.num_groups == 8 and torch_equivalent("gn", gn, 32, False).num_groups == 8
    assert main(["bench", "gn", "--shape", "16,32,4,4", "--set", "num_groups=7",
                 "--repeats", "1"]) == 0  # fmt: skip
    assert "- groupnorm: ValueError: num_groups=7 must be a positive divisor" in (
        capsys.readouterr().out
    )
    assert main(["bench", "bn", "--set", "num_groups=8"]) == 2
    assert "none of batchnorm takes 'num_groups'" in capsys.readouterr().err
    assert main(["bench", "gn", "--set", "8"]) == 2
    assert "--set takes KEY=VALUE" in capsys.readouterr().err
