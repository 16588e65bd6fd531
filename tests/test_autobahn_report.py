"""The Autobahn runner reads the fuzzing client's reports right (no Python 2.7 needed)."""

from __future__ import annotations

import json
import pathlib

from tests.autobahn import report


def write_reports(outdir: pathlib.Path) -> None:
    index = {
        "im": {
            "10.1.1": {"behavior": "OK", "behaviorClose": "OK", "reportfile": "a.json"},
            "2.1": {"behavior": "NON-STRICT", "behaviorClose": "OK", "reportfile": "b.json"},
            "2.10": {"behavior": "OK", "behaviorClose": "UNCLEAN", "reportfile": "c.json"},
            "6.3.1": {"behavior": "FAILED", "behaviorClose": "FAILED", "reportfile": "d.json"},
        }
    }
    (outdir / "index.json").write_text(json.dumps(index))
    for name, text in (("c.json", "drops the line"), ("d.json", "bad <br>UTF-8")):
        detail = {"description": text, "result": "Actual events differ.", "resultClose": "x"}
        (outdir / name).write_text(json.dumps(detail))


def test_report(tmp_path: pathlib.Path) -> None:
    write_reports(tmp_path)
    results = report.load(tmp_path, "im")
    assert [r.case_id for r in results] == ["2.1", "2.10", "6.3.1", "10.1.1"]
    assert [r.case_id for r in results if not r.passed] == ["2.10", "6.3.1"]
    assert results[2].description == "bad UTF-8"
    rows = report.summary_table(results).splitlines()
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert cells[2] == ["2", "2", "1", "1", "0", "0", "0", "1", "0", "0", "0", "1"]
    assert cells[-1][:7] == ["all", "4", "2", "1", "0", "1", "0"]
    assert report.other_results(results) == "close UNCLEAN: 1"
    lines = report.failure_lines(results)
    assert lines[0] == "2.10: behavior=OK close=UNCLEAN"
    assert not any(line.strip().startswith("result:") for line in lines[:3])
