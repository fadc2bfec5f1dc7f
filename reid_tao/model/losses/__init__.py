"""Losses: ID (cross entropy, label smoothing), batch-hard triplet, center, and their weighted sum."""
from .center import CenterLoss
from .cluster_memory import ClusterMemoryLoss, MemoryLossSum
from .combined import ReidLoss
from .cross_entropy import IdLoss
from .triplet import TripletLoss

# model.id_loss_type -> the ID loss (TAO's margin heads are broken, bug B4, and not implemented).
ID_LOSSES = {"softmax": IdLoss}

__all__ = ["CenterLoss", "ClusterMemoryLoss", "MemoryLossSum", "ID_LOSSES", "IdLoss", "ReidLoss", "TripletLoss"]
