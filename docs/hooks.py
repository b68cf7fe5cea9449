"""mkdocs hook: put the four notebooks into the site, with outputs where the test run left executed copies.

The repository keeps the notebooks stripped of outputs (``notebooks/``, executed by the test run through
nbmake). The test session saves each executed copy to ``runs/notebooks/`` (see ``conftest.py``); this hook
copies those into ``docs/notebooks/`` (ignored by git) for mkdocs-jupyter to render. Where no executed copy
exists (a docs build without a prior test run) the stripped notebook is used and the build says so.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.notebooks")
ROOT = Path(__file__).resolve().parents[1]


def on_config(config, **kwargs):
    dest = Path(config["docs_dir"]) / "notebooks"
    dest.mkdir(parents=True, exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        executed = ROOT / "runs" / "notebooks" / nb.name
        src = executed if executed.exists() and executed.stat().st_mtime >= nb.stat().st_mtime else nb
        if src is nb:
            log.info("notebook %s: no executed copy in runs/notebooks (run the tests first); rendered without outputs",
                     nb.name)
        shutil.copyfile(src, dest / nb.name)
    return config
