"""Evaluation: task readers and metrics (no framework dependencies)."""

from .metrics import spearman
from .tasks import StsPairs, load_sts

__all__ = ["StsPairs", "load_sts", "spearman"]
