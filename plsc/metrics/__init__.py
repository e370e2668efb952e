"""Evaluation metrics, registered by the names `Metric.Eval` uses."""
from plsc.metrics import fairness, mixfairface, recall, verification  # noqa: F401
