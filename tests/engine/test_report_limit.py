"""``sfseg report --limit``: the share of the source-only -> oracle gap each run closes, and the classes it
lost, against a hand computation."""

import re

from sfseg.engine.reporting.html_report import _limit_section


def _final(miou: float, **per_class) -> dict:
    return {"miou": miou, "per_class": per_class}


def test_gap_closed_and_classes_lost_by_hand():
    source = _final(30.0, road=80.0, pole=10.0, light=4.0)
    oracle = _final(70.0, road=90.0, pole=50.0, light=30.0)
    runs = [
        {"evals": [_final(50.0, road=85.0, pole=4.9, light=0.0)]},  # half the gap; pole < 10 / 2: lost
        {"evals": [_final(26.0, road=81.0, pole=5.0, light=1.0)]},  # below source-only; pole at half: kept
    ]
    html = _limit_section(["a", "b"], runs, [source, oracle])[1]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    rows = [cells[i : i + 4] for i in range(0, len(cells), 4)]
    assert rows[0][:3] == ["source-only", "30.0", "0 %"] and rows[1][:3] == ["oracle", "70.0", "100 %"]
    assert rows[2] == ["a", "50.0", "50 %", "pole"]  # (50 - 30) / (70 - 30); light had < 5 IoU: not counted
    assert rows[3] == ["b", "26.0", "-10 %", "none"]
