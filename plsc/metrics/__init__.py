"""Evaluation metrics, registered by the names `Metric.Eval` uses."""
from plsc.metrics import fairness, recall, verification  # noqa: F401
