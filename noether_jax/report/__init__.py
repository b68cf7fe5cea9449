"""The report (application tier): one self-contained HTML page of claims, predictions, measurements and
errors, with the figures embedded; :func:`reproduce` is the main job (``noether-jax reproduce``)."""

from ._html import Report, Section, environment, flatten
from ._parts import PARTS, nld_outputs, nld_section
from ._reproduce import QUICK_NM, nm_outputs, nm_section, reproduce, stability_note

__all__ = ["PARTS", "QUICK_NM", "Report", "Section", "environment", "flatten", "nld_outputs", "nld_section", "nm_outputs",
           "nm_section", "reproduce", "stability_note"]
