"""Report parts contributed by later experiments: ``(name, hook)`` with ``hook(out_dir, *, quick)``
returning ``(summary_part, [Section, ...])``. See :func:`noether_jax._report.reproduce`."""

PARTS: list = []
