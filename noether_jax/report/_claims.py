"""The report's verdicts: one typed :class:`Claim` per checked statement (private).

Each report part returns its claims with its sections; the headline table at the top of ``report.html``
is built from all of them, in order, so a later experiment adds rows by appending claims to its section.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PASSES = {"<=": lambda m, t: m <= t, "<": lambda m, t: m < t, ">=": lambda m, t: m >= t, ">": lambda m, t: m > t}
_SYMBOL = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}


@dataclasses.dataclass(frozen=True)
class Claim:
    """One row of the headline table: a statement, what the theory predicts, the measured number and the
    tolerance it is held to.

    Args:
        claim: the statement, short ("translation law, MLP, β = 0").
        prediction: what is compared with the measurement (a formula or the model's name).
        metric: what ``measured`` is, defined in words ("median over groups of the relative error").
        measured: the measured number; NaN or None (not measured, e.g. a diverged run) fails.
        tolerance: the bound ``measured`` must satisfy, by ``comparison``.
        comparison: ``"<="`` (the default), ``"<"``, ``">="`` or ``">"``.
        section: the anchor of the report section that explains it (a failing row links there).
        key: where ``measured`` is in ``summary.json``, as a dotted path (list items by index), or "".
        unit: ``"%"`` (``measured`` and ``tolerance`` are fractions, shown as percent), ``"°"``, ``"×"`` or "".

    Example:
        >>> c = Claim("translation law", "NM eq. 18", "median rel. error", 0.004, 0.01, section="nm")
        >>> c.passed, c.verdict, c.tolerance_text
        (True, '✔', '≤ 0.01')
        >>> Claim("x", "y", "z", float("nan"), 1.0).passed
        False
    """

    claim: str
    prediction: str
    metric: str
    measured: float | None
    tolerance: float
    comparison: str = "<="
    section: str = ""
    key: str = ""
    unit: str = ""

    def __post_init__(self):
        if self.comparison not in _PASSES:
            raise ValueError(f"Claim.comparison must be one of {sorted(_PASSES)}, got {self.comparison!r}.")
        if self.unit not in ("", "%", "°", "×"):
            raise ValueError(f"Claim.unit must be '', '%', '°' or '×', got {self.unit!r}.")

    @property
    def passed(self) -> bool:
        m = self.measured
        if m is None or not math.isfinite(float(m)):
            return False
        return bool(_PASSES[self.comparison](float(m), float(self.tolerance)))

    @property
    def verdict(self) -> str:
        return "✔" if self.passed else "✘"

    def _fmt(self, v: float | None) -> str:
        if v is None or not math.isfinite(float(v)):
            return "not measured"
        if self.unit == "%":
            return f"{100 * float(v):.3g} %"
        if self.unit == "°":
            return f"{float(v):.3g}°"
        if self.unit == "×":
            return f"{float(v):.3g} ×"
        return f"{float(v):.3g}"

    @property
    def measured_text(self) -> str:
        return self._fmt(self.measured)

    @property
    def tolerance_text(self) -> str:
        return f"{_SYMBOL[self.comparison]} {self._fmt(self.tolerance)}"


def lookup(summary: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a nested summary (list items by index): ``"a.0.b"``.

    Example:
        >>> lookup({"a": [{"b": 2.0}]}, "a.0.b")
        2.0
    """
    obj: Any = summary
    for part in key.split("."):
        obj = obj[int(part)] if isinstance(obj, Sequence) and not isinstance(obj, str) else obj[part]
    return obj


def verdict_line(claims: Iterable[Claim]) -> str:
    """The sentence a section opens with: how many of its claims hold.

    Example:
        >>> verdict_line([Claim("a", "b", "c", 0.1, 1.0), Claim("d", "e", "f", 2.0, 1.0)])
        '✘ 1 of 2 claims hold.'
    """
    claims = list(claims)
    if not claims:
        return ""
    ok = sum(c.passed for c in claims)
    mark = "✔" if ok == len(claims) else "✘"
    return f"{mark} {ok} of {len(claims)} claim{'s' if len(claims) > 1 else ''} hold{'s' if len(claims) == 1 else ''}."


__all__ = ["Claim", "lookup", "verdict_line"]
