"""Offline data: scikit-learn's digits (real data, no download), a teacher–student task, PRNG mini-batches."""

from ._data import Dataset, check_batch_size, digits, load, sample_batch, teacher_student

__all__ = ["Dataset", "check_batch_size", "digits", "load", "sample_batch", "teacher_student"]
