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
