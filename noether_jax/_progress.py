"""Progress for work that blocks without reporting: a spinner with the elapsed time (private).

XLA compilation (often longer than a short run) and one compiled training scan give no progress of their
own. :func:`spinner` keeps a tqdm line alive from a background thread while such a block runs: it
refreshes an existing bar (a sweep's bar over chunks, whose description then says what is compiling) or
a line of its own. The compiler releases the GIL, so the line keeps moving during compilation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@contextlib.contextmanager
def spinner(desc: str, *, enabled: bool = True, bar: Any = None, interval: float = 0.25) -> Iterator[None]:
    """Show ``desc``, a spinner and the elapsed seconds while the ``with`` block runs.

    Args:
        desc: what is happening ("compiling (batch size 128)").
        enabled: False: do nothing (no thread, no output).
        bar: an open tqdm bar to animate (its description is set to ``desc`` and restored after);
            default: a line of its own on stderr, closed with the total time.
        interval: seconds between refreshes.

    Example:
        >>> import time
        >>> with spinner("compiling", enabled=False):
        ...     time.sleep(0.01)
    """
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    own = bar is None
    line = tqdm(total=None, desc=desc, bar_format="{desc}{postfix}", leave=True) if own else bar
    old_desc = line.desc
    if not own:
        line.set_description_str(desc, refresh=False)
    stop = threading.Event()
    t0 = time.perf_counter()

    def tick() -> None:
        i = 0
        while not stop.wait(interval):
            line.set_postfix_str(f"{FRAMES[i % len(FRAMES)]} {time.perf_counter() - t0:.0f} s", refresh=True)
            i += 1

    thread = threading.Thread(target=tick, name="noether_jax-spinner", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        elapsed = time.perf_counter() - t0
        if own:
            line.set_postfix_str(f"done in {elapsed:.1f} s", refresh=True)
            line.close()
        else:
            line.set_postfix_str(f"{desc.split(' (')[0]} took {elapsed:.0f} s", refresh=False)
            line.set_description_str(old_desc, refresh=True)
