"""The report (application tier): one self-contained HTML page of claims, predictions, measurements and
errors, with the figures embedded; :func:`reproduce` is the main job (``noether-jax reproduce``)."""

from ._claims import Claim, lookup, verdict_line
from ._html import Report, Section, environment, flatten
from ._parts import PARTS, nld_outputs, nld_section
from ._reproduce import FULL_NM, QUICK_NM, config_tag, nm_claims, nm_outputs, nm_section, reproduce, stability_note

__all__ = ["FULL_NM", "PARTS", "QUICK_NM", "Claim", "Report", "Section", "config_tag", "environment", "flatten", "lookup", "nld_outputs",
           "nld_section", "nm_claims", "nm_outputs", "nm_section", "reproduce", "stability_note", "verdict_line"]
