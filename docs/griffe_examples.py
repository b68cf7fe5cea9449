"""Griffe extension for the API reference: the project's docstrings title their doctests ``Example:``,
which Google style reads as an admonition (rendered as prose). Renaming the title to ``Examples:``
makes griffe render them as code (``pycon``), as written."""

from __future__ import annotations

import re

import griffe

_TITLE = re.compile(r"^([ \t]*)Example:[ \t]*$", re.M)
_TITLED = re.compile(r"^([ \t]*)Example \((.*)\):[ \t]*$", re.M)  # "Example (what it shows):"


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:  # noqa: D102 - griffe hook
        if obj.docstring is not None:
            value = _TITLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _TITLED.sub(r"\1Examples:\n\1    \2:", value)
