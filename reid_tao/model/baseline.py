"""The BNNeck re-identification model ("Bag of Tricks", Luo et al. 2019) in one short module.

backbone -> global pooling -> [linear reduction to feat_dim] -> BNNeck -> bias-free classifier.
Training returns (logits, global feature) for the ID and metric losses (logits None once
:meth:`Baseline.freeze_id_head` was called: no ID loss); evaluation returns the test
feature chosen by ``neck_feat``: "after" the BNNeck (default) or "before" it.
"""

import torch
from torch import nn

from reid_tao.model.pooling import AveragePooling, GeneralizedMeanPooling

NECKS = ("bnneck", "")  # a BatchNorm1d with frozen bias, or none
NECK_FEATURES = ("after", "before")  # the test feature: after or before the neck


class Baseline(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        feat_dim: int,
        neck: str = "bnneck",
        neck_feat: str = "after",
        gem_pooling: bool = False,
        reduce_feat_dim: bool = True,
    ):
        super().__init__()
        if neck not in NECKS or neck_feat not in NECK_FEATURES:
            raise ValueError(
                f"neck must be one of {NECKS} and neck_feat one of {NECK_FEATURES}, got {neck!r} and {neck_feat!r}"
            )
        self.backbone = backbone
        self.pool = GeneralizedMeanPooling() if gem_pooling else AveragePooling()
        width = backbone.out_channels
        if reduce_feat_dim and feat_dim != width:
            self.reduction = nn.Linear(width, feat_dim, bias=False)
        else:
            self.reduction, feat_dim = nn.Identity(), width
        self.feat_dim = feat_dim
        self.neck_feat = neck_feat
        if neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(feat_dim)
            self.bottleneck.bias.requires_grad_(False)  # BNNeck: no shift, so ID and triplet spaces align
        else:
            self.bottleneck = nn.Identity()
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        self.classifier_trained = True
        self.metric_on_neck = False  # training gives the metric losses the feature before the neck (BoT)
        self._init_head()

    def freeze_id_head(self) -> None:
        """Train without an ID loss: the classifier is no longer run and is frozen, and so is the BNNeck scale
        unless the metric losses train on the neck's output (only a loss that sees the neck gives it a gradient;
        a parameter that requires a gradient and never gets one makes DDP fail at the second step). The BNNeck
        still runs, so its statistics keep being tracked for the "after" test feature; its shift stays frozen."""
        self.classifier.requires_grad_(False)
        if not self.metric_on_neck and isinstance(self.bottleneck, nn.BatchNorm1d):
            self.bottleneck.weight.requires_grad_(False)
        self.classifier_trained = False

    def train_metric_losses_on_neck(self) -> None:
        """Training returns the BNNeck output instead of the feature before it for the metric losses: the
        feature that clustering-based adaptation clusters and keeps in its cluster memory (Cluster Contrast)."""
        self.metric_on_neck = True

    def _init_head(self) -> None:
        nn.init.normal_(self.classifier.weight, std=0.001)
        if isinstance(self.reduction, nn.Linear):
            nn.init.kaiming_normal_(self.reduction.weight, mode="fan_out")
        if isinstance(self.bottleneck, nn.BatchNorm1d):
            nn.init.ones_(self.bottleneck.weight)
            nn.init.zeros_(self.bottleneck.bias)

    def global_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled (and reduced) feature before the BNNeck: what the metric losses see in training."""
        return self.reduction(self.pool(self.backbone(images)))

    def neck_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The BNNeck output (the "after" test feature)."""
        return self.bottleneck(self.global_feature(images))

    def forward(self, images: torch.Tensor):
        global_feat = self.global_feature(images)
        neck_out = self.bottleneck(global_feat)
        if self.training:
            logits = self.classifier(neck_out) if self.classifier_trained else None
            return logits, (neck_out if self.metric_on_neck else global_feat)
        return neck_out if self.neck_feat == "after" else global_feat
