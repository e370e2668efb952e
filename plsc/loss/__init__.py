"""Losses; importing the package registers them in LOSSES."""
from plsc.loss.adaface import AdaFace
from plsc.loss.center import CenterLoss
from plsc.loss.curricular import CurricularFace
from plsc.loss.group import GroupLoss
from plsc.loss.inputs import LossInputs, call_loss
from plsc.loss.l2_softmax import L2Softmax
from plsc.loss.magface import MagFace
from plsc.loss.margin import MarginLoss
from plsc.loss.mixfair import MixFairCosFace

__all__ = ["AdaFace", "CenterLoss", "CurricularFace", "GroupLoss", "L2Softmax", "LossInputs", "MagFace",
           "MarginLoss", "MixFairCosFace", "call_loss"]
