"""Classification heads; importing the package registers them in HEADS."""
from plsc.heads.partial_fc import PartialFC

__all__ = ["PartialFC"]
