"""Make CUDA-built torchvision importable on CPU-only torch (docs/pitfalls.md, "Environment and pins").

torchvision 0.28.0's wheel is a CUDA build: with the CPU build of torch its C++ ops fail to register and
`import torchvision` dies on `torchvision::nms`, which breaks transformers, open_clip and
segment_anything. Registering a pure-torch `nms` before torchvision is imported fixes it. Applied only
when the real op is missing; Ray workers get it at their first import of torchvision
(lambda_eclipse/ray_session.worker_setup).
"""

from __future__ import annotations

import torch

_LIB = None


def _has_nms() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the check
        return True
    except (AttributeError, RuntimeError):
        return False


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in range(len(boxes)):
        if not keep[i]:
            continue
        w = (torch.minimum(x2[i], x2[i + 1 :]) - torch.maximum(x1[i], x1[i + 1 :])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[i + 1 :]) - torch.maximum(y1[i], y1[i + 1 :])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[i + 1 :] - inter).clamp(min=1e-12)
        keep[i + 1 :] &= iou <= iou_threshold
    return order[keep]


def ensure_torchvision_ops() -> None:
    """Register `torchvision::nms` (and `qnms`) if torchvision's compiled ops cannot provide it."""
    global _LIB
    if _LIB is not None or _has_nms():
        return
    _LIB = torch.library.Library("torchvision", "DEF")
    # torchvision registers fake kernels for exactly these two ops whether or not its C++ ops loaded.
    for name in ("nms", "qnms"):
        _LIB.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.impl(name, _nms, "CompositeExplicitAutograd")
