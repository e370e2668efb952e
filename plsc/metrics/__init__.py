"""Evaluation metrics, registered by the names `Metric.Eval` uses."""
from plsc.metrics import verification  # noqa: F401
