"""A self-contained HTML report: sections of claim, prediction, measurement and error, with embedded figures (private)."""

from __future__ import annotations

import dataclasses
import html
import json
import platform
from pathlib import Path
from typing import Any

import jax

from .._io import atomic_write, jsonable
from ._claims import Claim, verdict_line


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists of scalars are kept as they are)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def environment() -> dict[str, Any]:
    import diffrax
    import equinox
    import flax
    import optax

    from .. import __version__

    return {
        "noether_jax": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "float64": bool(jax.config.jax_enable_x64),
    }


@dataclasses.dataclass
class Section:
    """One section of the report: the claim, prediction, measurement and error paragraphs, a table of
    labelled numbers, figures ``(caption, base64 PNG)``, and the :class:`Claim` rows it contributes to the
    headline table (the section opens with their verdict). ``level`` 3 nests it under the previous one."""

    title: str
    claim: str = ""
    prediction: str = ""
    measurement: str = ""
    error: str = ""
    figures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (caption, base64 png)
    table: dict[str, Any] = dataclasses.field(default_factory=dict)
    anchor: str = ""
    claims: list[Claim] = dataclasses.field(default_factory=list)
    level: int = 2


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:820px;margin:2em auto;padding:0 10px;line-height:1.45}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%;height:auto}"
    "figure{margin:1em 0}figcaption{font-size:13px;color:#333}section{border-top:2px solid #eee;margin-top:2em}"
    "section.sub{border-top:1px dashed #eee;margin-top:1.2em}.pass{color:#1a7f37;font-weight:bold}"
    ".fail{color:#cf222e;font-weight:bold}.verdict{font-size:15px}td.num{text-align:right}.n{white-space:nowrap}small{color:#555}"
)


def _headline(claims: list[Claim]) -> list[str]:
    rows = ["<table id='headline'><tr><th>claim</th><th>prediction</th><th>measured error</th><th>tolerance</th>"
            "<th>verdict</th></tr>"]
    for c in claims:
        cls = "pass" if c.passed else "fail"
        verdict = f"<span class='{cls}'>{c.verdict}</span>"
        if not c.passed and c.section:
            verdict = f"<a href='#{c.section}'>{verdict} why</a>"
        claim = f"<a href='#{c.section}'>{html.escape(c.claim)}</a>" if c.section else html.escape(c.claim)
        measured = float("nan") if c.measured is None else float(c.measured)
        rows.append(f"<tr data-key='{html.escape(c.key)}' data-measured='{measured!r}'><td>{claim}</td>"
                    f"<td>{c.prediction}</td><td class='num' title='{html.escape(c.metric)}'><span class='n'>{c.measured_text}</span>"
                    f"<br><small>{html.escape(c.metric)}</small></td><td class='num'><span class='n'>{c.tolerance_text}</span></td>"
                    f"<td>{verdict}</td></tr>")
    rows.append("</table>")
    return rows


class Report:
    """A self-contained HTML report: add sections, then :meth:`write`.

    The page opens with the headline table (every section's :class:`Claim` rows, a failing row linking to
    its section), then the sections, each opening with its verdict, then the environment.
    """

    def __init__(self, title: str, intro: str = ""):
        self.title = title
        self.intro = intro
        self.sections: list[Section] = []

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    @property
    def claims(self) -> list[Claim]:
        return [c for s in self.sections for c in s.claims]

    def _section(self, s: Section, seen: set[str]) -> list[str]:
        tag = "h2" if s.level <= 2 else "h3"
        parts = [f"<section id='{s.anchor}'{' class=sub' if s.level > 2 else ''}><{tag}>{html.escape(s.title)}</{tag}>"]
        if s.claims:
            cls = "pass" if all(c.passed for c in s.claims) else "fail"
            parts.append(f"<p class='verdict'><b>Verdict: <span class='{cls}'>{verdict_line(s.claims)}</span></b> "
                         + "; ".join(f"{html.escape(c.claim.split(',')[0])}: {c.measured_text} ({c.tolerance_text}) {c.verdict}"
                                     for c in s.claims) + ".</p>")
        for label, text in (("Claim", s.claim), ("Prediction", s.prediction), ("Measurement", s.measurement), ("Error", s.error)):
            if text:
                parts.append(f"<p><b>{label}.</b> {text}</p>")
        if s.table:
            parts.append("<table>" + "".join(f"<tr><td>{k}</td><td class='num'>{_fmt(v)}</td></tr>" for k, v in s.table.items())
                         + "</table>")
        for caption, b64 in s.figures:
            if b64 in seen:  # one figure appears once in the report
                continue
            seen.add(b64)
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
        return parts

    def write(self, path: Path, summary: dict) -> Path:
        parts = [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        if self.intro:
            parts.append(f"<p>{self.intro}</p>")
        claims = self.claims
        if claims:
            ok = sum(c.passed for c in claims)
            parts.append(f"<h2 id='verdicts'>Verdicts: {ok} of {len(claims)} claims hold</h2>")
            parts += _headline(claims)
        parts.append("<ul>")
        parts += [f"<li><a href='#{s.anchor}'>{html.escape(s.title)}</a></li>" for s in self.sections if s.level <= 2]
        parts.append("<li><a href='#environment'>Environment</a></li></ul>")
        seen: set[str] = set()
        for s in self.sections:
            parts += self._section(s, seen)
        env = summary.get("environment", {})
        parts.append("<section id='environment'><h2>Environment</h2><table>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in env.items()]
        parts.append("</table></section>")
        parts.append("<script type='application/json' id='summary-json'>"
                     + html.escape(json.dumps(jsonable(summary)), quote=False) + "</script>")
        parts.append("</body></html>")
        return atomic_write(path, "\n".join(parts).encode("utf-8"))
