"""Losses: ID (cross entropy, label smoothing), batch-hard triplet, center, and their weighted sum."""
from .center import CenterLoss
from .combined import ReidLoss
from .cross_entropy import IdLoss
from .triplet import TripletLoss

__all__ = ["CenterLoss", "IdLoss", "ReidLoss", "TripletLoss"]
