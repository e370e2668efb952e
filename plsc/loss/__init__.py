"""Losses; importing the package registers them in LOSSES."""
from plsc.loss.margin import MarginLoss

__all__ = ["MarginLoss"]
