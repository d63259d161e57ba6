"""The training loss: pixel-wise cross-entropy over labelled pixels, weighted by class and by pixel, averaged
over the network's heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tileseg.models.crop import centre_crop
from tileseg.training.data import IGNORE_INDEX


def segmentation_loss(
    heads: list[torch.Tensor],
    labels: torch.Tensor,
    class_weights: torch.Tensor | None,
    pixel_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Mean over heads of the weighted pixel-wise cross-entropy over labelled pixels.

    Each pixel weighs ``class_weights[label] + pixel_weights`` (1 + border term without class weights);
    ignored pixels weigh 0; the loss is ``sum(w * ce) / sum(w)``. A head smaller than the labels is scored on
    their centre (valid-convolution deep supervision).

    Args:
        heads: logits ``(B, K, h, w)`` of each head.
        labels: ``(B, H, W)`` int64 channels, :data:`~.data.IGNORE_INDEX` where unknown; ``H >= h``, ``W >= w``.
        class_weights: ``(K,)`` float32, or None.
        pixel_weights: ``(B, H, W)`` float32 added to each pixel's weight (U-Net's border term), or None.

    Returns:
        The loss, a scalar.
    """
    losses = []
    for logits in heads:
        h, w = logits.shape[-2:]
        y = centre_crop(labels, h, w)
        ce = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="none")
        labelled = y != IGNORE_INDEX
        if class_weights is not None:
            weight = class_weights[y.clamp(max=len(class_weights) - 1)]
        else:
            weight = torch.ones_like(ce)
        if pixel_weights is not None:
            weight = weight + centre_crop(pixel_weights, h, w)
        weight = weight * labelled
        # clamp: a crop with no labelled pixel gives loss 0 (and no gradient), not NaN
        losses.append((weight * ce).sum() / weight.sum().clamp(min=1e-6))
    return torch.stack(losses).mean()
