"""Classification heads; importing the package registers them in HEADS (and GroupFace in MODELS)."""
from plsc.heads import groupface  # noqa: F401  (registers GroupFace_IResNet* in MODELS)
from plsc.heads.partial_fc import PartialFC
from plsc.heads.subcenter import SubCenterPartialFC

__all__ = ["PartialFC", "SubCenterPartialFC"]
