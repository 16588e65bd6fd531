"""Reading the fuzzing client's reports: a per-section summary and the failures.

``index.json`` maps agent -> case id -> ``{"behavior", "behaviorClose",
"reportfile", ...}``; each case's own report file holds its description and the
result text. ``behavior`` judges what the server sent, ``behaviorClose`` how the
connection ended; both count.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from collections.abc import Iterable

import attrs

#: Results that pass. Anything else (FAILED, WRONG CODE, UNCLEAN, FAILED BY CLIENT,
#: UNIMPLEMENTED for a case that was asked for) fails the run.
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
COLUMNS = (*PASSING, "FAILED")


@attrs.frozen
class CaseResult:
    case_id: str
    behavior: str
    behavior_close: str
    description: str = ""
    result: str = ""
    result_close: str = ""

    @property
    def section(self) -> str:
        return self.case_id.split(".", 1)[0]

    @property
    def passed(self) -> bool:
        return self.behavior in PASSING and self.behavior_close in PASSING


def _case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def load(outdir: pathlib.Path, agent: str) -> list[CaseResult]:
    """Every case of ``agent`` in ``outdir``, in case order; failed ones with details."""
    index = json.loads((outdir / "index.json").read_text())[agent]
    results = []
    for case_id in sorted(index, key=_case_key):
        entry = index[case_id]
        case = CaseResult(case_id, entry["behavior"], entry["behaviorClose"])
        if not case.passed and entry.get("reportfile"):
            detail = json.loads((outdir / entry["reportfile"]).read_text())
            case = attrs.evolve(
                case,
                description=_one_line(detail.get("description", "")),
                result=_one_line(detail.get("result", "")),
                result_close=_one_line(detail.get("resultClose", "")),
            )
        results.append(case)
    return results


def _one_line(text: str) -> str:
    return " ".join(str(text).replace("<br>", " ").split())


def _counts(values: Iterable[str]) -> list[int]:
    counts = Counter(values)
    known = [counts.pop(name, 0) for name in COLUMNS]
    return [*known, sum(counts.values())]


def summary_table(results: list[CaseResult]) -> str:
    """A Markdown table: per section, the count of each result for both verdicts."""
    names = ["OK", "NON-STRICT", "INFO", "FAILED", "other"]
    head = ["section", "cases", *names, *(f"close {n}" for n in names)]
    rows = []
    sections = sorted({r.section for r in results}, key=int)
    for section in [*sections, "all"]:
        cases = [r for r in results if section in ("all", r.section)]
        behavior = _counts(r.behavior for r in cases)
        close = _counts(r.behavior_close for r in cases)
        rows.append([section, str(len(cases)), *map(str, behavior), *map(str, close)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(head), rule, *map(line, rows)])


def other_results(results: list[CaseResult]) -> str:
    """What the "other" columns hold, e.g. ``close UNCLEAN: 25``."""
    counts = Counter(f"{r.behavior}" for r in results if r.behavior not in COLUMNS)
    counts.update(f"close {r.behavior_close}" for r in results if r.behavior_close not in COLUMNS)
    return ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))


def failure_lines(results: list[CaseResult]) -> list[str]:
    """One block per case that did not pass: id, verdicts, description, result."""
    lines = []
    for r in results:
        if r.passed:
            continue
        lines.append(f"{r.case_id}: behavior={r.behavior} close={r.behavior_close}")
        lines.append(f"    case:   {r.description}")
        if r.behavior not in PASSING:
            lines.append(f"    result: {r.result}")
        if r.behavior_close not in PASSING:
            lines.append(f"    close:  {r.result_close}")
    return lines
