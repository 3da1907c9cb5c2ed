"""A user's own data file with missing columns or too few rows: a clear message naming the
file, the column or count and the fix, exit code 2, nothing started (even with --dry-run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main


def csv(tmp_path: Path, header: str, rows: int) -> Path:
    f = tmp_path / "mine.csv"
    cols = header.split(",")
    f.write_text(
        header + "\n" + "".join(",".join(f"{c}{i % 3}" for c in cols) + "\n" for i in range(rows))
    )
    return f


@pytest.mark.parametrize(
    ("header", "rows", "overrides", "expect"),
    [
        ("body,label,topic", 40, [], "no column 'text'.*data.text_field"),
        ("text,sentiment,topic", 40, [], "no label column 'label'.*data.label_field"),
        ("text,label", 40, [], "no column 'topic' to split sites by.*partition.column"),
        ("text,label,topic", 5, ["partition.kind=iid"], "5 row\\(s\\).*federation.num_sites=4"),
        ("text,label,topic", 40, ["federation.num_sites=5"], "3 distinct values.*num_sites"),
    ],
)
def test_bad_data_file_exits_2_with_a_clear_message(
    tmp_path, capsys, header, rows, overrides, expect
):
    f = csv(tmp_path, header, rows)
    code = main(
        ["simulate", f"data.paths=[{f}]", f"run.dir={tmp_path / 'run'}", *overrides, "--dry-run"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "mine.csv" in err
    import re

    assert re.search(expect, " ".join(err.split())), err
    assert not (tmp_path / "run").exists()


def test_unsupported_and_missing_files(tmp_path, capsys):
    x = tmp_path / "data.xlsx"
    x.write_text("nope")
    assert main(["simulate", f"data.paths=[{x}]", "--dry-run"]) == 2
    assert "unsupported suffix '.xlsx'" in capsys.readouterr().err
