"""Camera-aware proxy loss for pseudo labels (CAP, Wang et al. 2021; ICE, Chen et al. 2021).

A cluster seen by several cameras gets one proxy per camera: the mean feature of its images on that camera. The
cameras' own looks (light, colour, viewpoint) pull a cluster's images apart by camera; two terms work on the
proxies after each clustering:

* intra-camera: each image is classified among the proxies of its own camera (its cluster's proxy there is the
  positive), so the identities are told apart without the camera as a cue;
* inter-camera: each image is pulled to all proxies of its cluster, on every camera, against the hardest proxies
  of other clusters (the ``hard_negatives`` most similar), which makes a person's views on different cameras
  close: exactly what a query on one camera and its gallery on another need.

The loss is ``intra + inter_weight * inter``; proxies move towards their batch features by momentum, like the
cluster memory. With a single camera in the data the term is off (0): the cluster memory already does the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid_tao.model.losses.cluster_memory import label_means, momentum_update
from reid_tao.model.losses.term import LossSettings, PseudoLabelTerm


class CameraProxyLoss(PseudoLabelTerm):
    """Args:
    feat_dim: width of the features.
    temperature: of the softmax over proxy similarities (CAP: 0.07).
    momentum: share of the old proxy kept in each update (CAP: 0.2).
    inter_weight: weight of the inter-camera term (CAP: 0.5).
    hard_negatives: proxies of other clusters in the inter-camera term's denominator (CAP: 50).
    """

    needs_cameras = True
    weight_field = "adaptation.camera_loss_weight"

    def __init__(
        self,
        feat_dim: int,
        temperature: float = 0.07,
        momentum: float = 0.2,
        inter_weight: float = 0.5,
        hard_negatives: int = 50,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if inter_weight < 0 or hard_negatives < 1:
            raise ValueError(f"inter_weight must be >= 0 and hard_negatives >= 1, got {inter_weight}, {hard_negatives}")
        self.feat_dim, self.temperature, self.momentum = feat_dim, float(temperature), float(momentum)
        self.inter_weight, self.hard_negatives = float(inter_weight), int(hard_negatives)
        for name, shape, dtype in (
            ("proxies", (0, feat_dim), torch.float32),
            ("proxy_cluster", (0,), torch.long),
            ("proxy_camera", (0,), torch.long),
            ("camera_ids", (0,), torch.long),
            ("proxy_of", (0, 0), torch.long),
        ):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype), persistent=False)

    @classmethod
    def from_settings(cls, settings: LossSettings) -> CameraProxyLoss:
        return cls(
            settings.feat_dim,
            temperature=settings.camera_temperature,
            momentum=settings.camera_momentum,
            inter_weight=settings.camera_inter_weight,
            hard_negatives=settings.camera_hard_negatives,
        )

    @property
    def active(self) -> bool:
        """Whether the last clustering's images came from more than one camera."""
        return self.camera_ids.numel() > 1

    @torch.no_grad()
    def reset_pseudo_labels(self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor) -> None:
        device = features.device
        labels, cameras = labels.to(device), cameras.to(device)
        kept = labels >= 0
        camera_ids = torch.unique(cameras)
        camera_index = torch.searchsorted(camera_ids, cameras)
        keys = labels * len(camera_ids) + camera_index
        present, proxy_index = torch.unique(keys[kept], return_inverse=True)
        rows = torch.full_like(labels, -1)
        rows[kept] = proxy_index
        self.proxies = label_means(features, rows, len(present))
        self.proxy_cluster, self.proxy_camera = present // len(camera_ids), present % len(camera_ids)
        self.camera_ids = camera_ids
        proxy_of = torch.full((int(labels.max()) + 1, len(camera_ids)), -1, dtype=torch.long, device=device)
        proxy_of[self.proxy_cluster, self.proxy_camera] = torch.arange(len(present), device=device)
        self.proxy_of = proxy_of

    def value(self, logits, features: torch.Tensor, targets: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return features.sum() * 0.0  # one camera: nothing camera-aware to learn (keeps the graph for DDP)
        normalised = F.normalize(features.float(), dim=1)
        proxies = self.proxies.to(normalised.device)
        camera = torch.searchsorted(self.camera_ids, cameras.to(normalised.device))
        own = self.proxy_of[targets, camera]  # every trained (cluster, camera) has one: reset built them all
        similarity = normalised @ proxies.clone().T / self.temperature  # (B, P); a copy: the update is in place
        same_camera = self.proxy_camera[None, :] == camera[:, None]
        intra = F.cross_entropy(similarity.masked_fill(~same_camera, float("-inf")), own)
        positive = self.proxy_cluster[None, :] == targets[:, None]
        negatives = similarity.masked_fill(positive, float("-inf"))
        hard = negatives.topk(min(self.hard_negatives, negatives.shape[1]), dim=1).values
        positives = similarity.masked_fill(~positive, float("-inf"))
        denominator = torch.logsumexp(torch.cat([positives, hard], dim=1), dim=1, keepdim=True)
        log_share = torch.where(positive, similarity - denominator, torch.zeros_like(similarity))
        inter = -(log_share.sum(dim=1) / positive.sum(dim=1)).mean()
        if self.training:
            with torch.no_grad():
                momentum_update(proxies, own, normalised.detach(), self.momentum)
            self.proxies = proxies
        return intra + self.inter_weight * inter
