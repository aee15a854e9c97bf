"""``normzoo summarize``: every metrics.json under a folder, one table (stdlib only)."""

import csv
import json

from normzoo.cli import main
from normzoo.summary import collect, summarize


def write_run(folder, **metrics):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_collects_nested_runs_sorted_and_writes_csv(tmp_path):
    base = {"model": "convnet2d", "data": "digits", "seed": 0, "train_time_s": 1.5}
    write_run(tmp_path / "b" / "1", norm="groupnorm", batch_size=16, test_acc=0.9, **base)
    write_run(tmp_path / "a", norm="groupnorm", batch_size=4, test_acc=0.8, **base)
    write_run(tmp_path / "c", norm="batchnorm", batch_size=32, test_acc=0.95, **base)
    (tmp_path / "notes.json").write_text("{}")  # not a metrics.json: ignored
    rows = collect(tmp_path)
    assert [(r["norm"], r["batch_size"]) for r in rows] == [
        ("batchnorm", 32),
        ("groupnorm", 4),
        ("groupnorm", 16),  # numeric order, not "16" < "4"
    ]
    assert rows[2]["run"] == "b/1"
    table, path = summarize(tmp_path)
    assert path == tmp_path / "summary.csv"
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "norm" and "test_acc" in lines[0]
    assert "0.9500" in lines[2]
    with path.open() as f:
        assert [r["test_acc"] for r in csv.DictReader(f)] == ["0.95", "0.8", "0.9"]


def test_cli_prints_the_table_and_fails_clearly_on_an_empty_folder(tmp_path, capsys):
    assert main(["summarize", str(tmp_path)]) == 1
    assert "no metrics.json" in capsys.readouterr().err
    write_run(tmp_path / "r", norm="layernorm", batch_size=8, seed=1, test_acc=0.5)
    out_csv = tmp_path / "out.csv"
    assert main(["summarize", str(tmp_path), "--csv", str(out_csv), "--columns", "norm,seed"]) == 0
    out = capsys.readouterr().out
    assert "| layernorm | 1    |" in out
    assert out_csv.read_text().splitlines() == ["norm,seed", "layernorm,1"]
