"""The generated recorded-runs table lists every result JSON, and is deterministic."""

import json
import shutil
from pathlib import Path

from memsim.validation.history import RESULTS, history_table, write_history


def test_history_lists_every_recorded_result():
    table = history_table(RESULTS)
    jsons = sorted(RESULTS.glob("*.json"))
    assert jsons, "no recorded results"
    for path in jsons:
        assert f"[{path.stem}]({path.name})" in table
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert len(rows) == len(jsons)


def test_committed_history_is_up_to_date():
    assert (RESULTS / "history.md").read_text() == history_table(RESULTS)


def test_history_row_figures(tmp_path: Path):
    src = sorted(RESULTS.glob("*.json"))[-1]
    shutil.copy(src, tmp_path / "x-cpu-20270101-0930.json")
    doc = json.loads(src.read_text())
    out = write_history(tmp_path)
    text = out.read_text()
    assert text == history_table(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| ["))
    assert "2027-01-01 09:30" in row
    assert f"{doc['median_abs_error']:.1%}" in row
    assert f"{doc['max_abs_error']:.1%}" in row
