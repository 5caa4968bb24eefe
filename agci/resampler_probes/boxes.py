"""Box arithmetic for the RefCOCOg probe: normalised (cx, cy, w, h) <-> (x0, y0, x1, y1), IoU, GIoU."""

from __future__ import annotations

import torch


def xywh_to_cxcywh(box, width: float, height: float) -> list[float]:
    """A COCO box (x, y, w, h in pixels) as normalised centre and size."""
    x, y, w, h = box
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two (..., 4) xyxy box tensors; 0 where the union is empty."""
    lo, hi = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    union = _area(a) + _area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise generalised IoU (Rezatofighi et al. 2019) of (..., 4) xyxy boxes, in [-1, 1]."""
    lo, hi = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    union = _area(a) + _area(b) - inter
    iou_ = inter / union.clamp_min(1e-12)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    return iou_ - (hull - union) / hull.clamp_min(1e-12)


def box_loss(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor, giou_weight: float, l1_weight: float):
    """The (M)DETR box loss: ``giou_weight * (1 - GIoU) + l1_weight * L1``, averaged over boxes."""
    g = giou(cxcywh_to_xyxy(pred_cxcywh), cxcywh_to_xyxy(target_cxcywh))
    l1 = (pred_cxcywh - target_cxcywh).abs().sum(-1)
    return (giou_weight * (1 - g) + l1_weight * l1).mean()


def accuracy_at(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor, threshold: float = 0.5) -> float:
    """Share of predictions whose IoU with the target reaches ``threshold``."""
    return (iou(cxcywh_to_xyxy(pred_cxcywh), cxcywh_to_xyxy(target_cxcywh)) >= threshold).float().mean().item()
