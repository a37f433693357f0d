"""train_report on synthetic metrics.jsonl files laid out as medusa/training/trainer.py writes them:
the table shows the lowest-loss epoch, the PNG is written, bad input is a one-line UsageError."""
import json

import pytest

from medusa import cli
from medusa.cli import train_report as train_report_cmd
from medusa.runtime.errors import UsageError
from medusa.training import report as train_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def val_record(epoch, loss, K):
    """A val record of Trainer.end_of_epoch; head k's top-1 = epoch/10 + k/100, top-5 = that + 0.2."""
    record = dict(split="val", step=epoch * 27, epoch=float(epoch), loss=loss, tokens=3758)
    for k in range(K):
        record.update({f"head{k}_loss": loss / K, f"head{k}_top1": epoch / 10 + k / 100,
                       f"head{k}_top5": epoch / 10 + k / 100 + 0.2})
    return record


def write_metrics(path, losses, K, tail=""):
    """A log of len(losses) epochs: train records every 10 steps, a val record per epoch, early stop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for epoch, loss in enumerate(losses, 1):
        records += [dict(split="train", step=s, lr=1e-3, loss=loss + 1, head0_top1=0.5)
                    for s in range((epoch - 1) * 27 + 10, epoch * 27, 10)]
        records.append(val_record(epoch, loss, K))
    records.append(dict(split="early_stop", step=81, best=min(losses), evaluations_without_best=1))
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


@pytest.fixture
def specs(tmp_path):
    """Two runs of 3 epochs: "a" (2 heads, best epoch 2, a killed writer's half line at the end)
    given as its file, "b" (4 heads, best epoch 3) as its folder."""
    write_metrics(tmp_path / "a" / "metrics.jsonl", [20.0, 15.0, 17.0], K=2, tail='{"split": "tra')
    write_metrics(tmp_path / "b" / "metrics.jsonl", [30.0, 25.0, 24.5], K=4)
    return [f"a={tmp_path / 'a' / 'metrics.jsonl'}", f"b={tmp_path / 'b'}"]


def test_load_runs_keeps_val_records_in_order(specs):
    runs = train_report.load_runs(specs)
    assert list(runs) == ["a", "b"]
    assert [r["epoch"] for r in runs["a"]] == [1.0, 2.0, 3.0]
    assert [train_report.num_heads(r[0]) for r in runs.values()] == [2, 4]


def test_table_shows_the_lowest_loss_epoch(specs):
    lines = train_report.table(train_report.load_runs(specs)).splitlines()
    assert lines[0] == "| run | epochs | best epoch | val loss | head 0 | head 1 | head 2 | head 3 |"
    assert lines[1] == "| --- " * 8 + "|"
    assert lines[2] == "| a | 3 | 2 | 15.00 | 0.200 / 0.400 | 0.210 / 0.410 | - | - |"   # not the last epoch
    assert lines[3] == "| b | 3 | 3 | 24.50 | 0.300 / 0.500 | 0.310 / 0.510 | 0.320 / 0.520 | 0.330 / 0.530 |"


def test_nan_loss_is_never_best():
    records = [val_record(1, float("nan"), 2), val_record(2, 9.0, 2), val_record(3, 9.0, 2)]
    assert train_report.best(records)["epoch"] == 2   # NaN skipped, the first of ties


def test_plot_writes_a_png(specs, tmp_path):
    png = train_report.plot(train_report.load_runs(specs), tmp_path / "val.png")
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


@pytest.mark.parametrize("spec, fragments", [
    ("no_equals_sign", ["'no_equals_sign'", "LABEL=PATH"]),
    ("=some/path", ["LABEL=PATH"]),
    ("a=", ["LABEL=PATH"]),
    ("a={tmp}/nowhere/metrics.jsonl", ["nowhere/metrics.jsonl does not exist", "--output_dir"]),
    ("a={tmp}/empty_folder", ["empty_folder/metrics.jsonl does not exist"]),
    ("a={tmp}/no_val/metrics.jsonl", ["no_val/metrics.jsonl has no val record", "--val_ratio"]),
    ("a={tmp}/broken/metrics.jsonl", ["broken/metrics.jsonl: line 2", "without loss"]),
])
def test_bad_runs_are_usage_errors_naming_the_path(tmp_path, spec, fragments):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "no_val").mkdir()
    (tmp_path / "no_val" / "metrics.jsonl").write_text(json.dumps(dict(split="train", step=10, loss=3.0)) + "\n")
    broken = val_record(2, 1.0, 2)
    del broken["loss"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text(json.dumps(dict(split="train", step=10, loss=3.0)) + "\n"
                                                       + json.dumps(broken) + "\n")
    with pytest.raises(UsageError) as e:
        train_report.load_runs([spec.format(tmp=tmp_path)])
    for fragment in fragments:
        assert fragment in str(e.value)


def test_same_label_twice_is_a_usage_error(specs):
    with pytest.raises(UsageError, match="label 'a' is given twice"):
        train_report.load_runs([specs[0], specs[0]])


def test_main_writes_png_prints_table_and_refuses_to_overwrite(specs, tmp_path, capsys):
    out = tmp_path / "report" / "val.png"   # its folder is made
    train_report_cmd.main(["--runs", *specs, "--output", str(out)])
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().out.splitlines()[2].startswith("| a | 3 | 2 | 15.00 |")
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as e:
        cli.run(train_report_cmd.main, ["--runs", *specs, "--output", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --output") and "--force" in err
    assert out.read_bytes() == b"keep me"
    train_report_cmd.main(["--runs", *specs, "--output", str(out), "--force"])
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_main_checks_output_before_reading_runs(tmp_path):
    with pytest.raises(UsageError, match="give a .png file name"):
        train_report_cmd.main(["--runs", f"a={tmp_path}/nowhere", "--output", str(tmp_path / "val.pdf")])
