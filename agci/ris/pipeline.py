"""Text features, mask proposals, and the choice of one mask for a referring expression."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .encoders import Encoder
from .spatial import cluster, default_layer, mask_iou, spatial_map, upsample

# words after which a referring expression stops describing its head noun (the fallback without spaCy)
_BREAKS = {"in", "on", "at", "of", "with", "by", "near", "behind", "next", "to", "from", "under", "over", "above",
           "below", "beside", "between", "left", "right", "who", "that", "which", "wearing", "holding", "sitting",
           "standing", "is", "are", "has", "having", "for", "and"}  # fmt: skip
RELATIONS = {"left": ("x", -1), "right": ("x", 1), "top": ("y", -1), "up": ("y", -1), "upper": ("y", -1),
             "above": ("y", -1), "bottom": ("y", 1), "down": ("y", 1), "lower": ("y", 1), "below": ("y", 1),
             "big": ("area", 1), "bigger": ("area", 1), "biggest": ("area", 1), "large": ("area", 1),
             "larger": ("area", 1), "largest": ("area", 1), "small": ("area", -1), "smaller": ("area", -1),
             "smallest": ("area", -1), "little": ("area", -1)}  # fmt: skip
MODES = ("full", "global", "pmap")


def head_phrase(text: str) -> str:
    """The expression's head noun phrase: spaCy's first noun chunk when spaCy and an English model are
    installed; otherwise the words before the first preposition, relative pronoun or verb-like word
    ("the man in red on the left" -> "the man")."""
    if "nlp" not in head_phrase.__dict__:  # loaded once; None when spaCy or its English model is missing
        try:
            import spacy

            head_phrase.nlp = spacy.load("en_core_web_sm")
        except (ImportError, OSError):
            head_phrase.nlp = None
    if head_phrase.nlp is not None:
        chunks = list(head_phrase.nlp(text).noun_chunks)
        if chunks:
            return chunks[0].text
    words = text.strip().split()
    head = []
    for w in words:
        if head and w.lower().strip(",.") in _BREAKS:
            break
        head.append(w)
    return " ".join(head) or text


def text_feature(encoder: Encoder, texts: list[str]) -> torch.Tensor:
    """0.5 x sentence + 0.5 x head noun phrase, L2-normalised, one row per text."""
    both = encoder.text_features([*texts, *[head_phrase(t) for t in texts]])
    return torch.nn.functional.normalize(0.5 * both[: len(texts)] + 0.5 * both[len(texts) :], dim=-1)


# -- mask proposals -------------------------------------------------------------------------------------
class DiskMasks:
    """Masks read from disk: ``ROOT/<image stem>.json`` (a list of COCO RLE dicts) or PNG files in
    ``ROOT/<image stem>/`` (non-zero = inside)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, image, name: str) -> np.ndarray:
        from PIL import Image

        stem = Path(name).stem
        if (self.root / f"{stem}.json").is_file():
            from pycocotools import mask as rle

            masks = [rle.decode(r).astype(bool) for r in json.loads((self.root / f"{stem}.json").read_text())]
        elif (self.root / stem).is_dir():
            masks = [np.array(Image.open(p).convert("L")) > 0 for p in sorted((self.root / stem).glob("*.png"))]
        else:
            raise FileNotFoundError(
                f"no masks for {name}: expected {self.root / stem}.json or {self.root / stem}/*.png"
            )
        masks = [m for m in masks if m.shape == (image.height, image.width) and m.any()]
        if not masks:
            raise ValueError(f"{name}: no non-empty mask of the image's size ({image.height} x {image.width})")
        return np.stack(masks)


class Mask2FormerMasks:
    """Every query mask of a Mask2Former checkpoint (the reference: COCO panoptic, Swin-L), as
    probabilities above ``threshold`` (0.35 as the reference) at the image's size; empty ones dropped."""

    def __init__(self, path: str, threshold: float = 0.35, device: str = "cpu"):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path).to(device).eval()
        self.processor, self.threshold = AutoImageProcessor.from_pretrained(path), threshold

    @torch.no_grad()
    def __call__(self, image, name: str) -> np.ndarray:
        batch = self.processor(images=[image], return_tensors="pt")
        device = next(self.model.parameters()).device
        logits = self.model(**{k: v.to(device) for k, v in batch.items()}).masks_queries_logits[0]
        size = batch["pixel_values"].shape[-2:]
        logits = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        valid = batch["pixel_mask"][0].bool() if "pixel_mask" in batch else torch.ones(size, dtype=torch.bool)
        logits = logits[:, : int(valid.any(1).sum()), : int(valid.any(0).sum())]  # the image without padding
        logits = torch.nn.functional.interpolate(logits[None], size=(image.height, image.width), mode="bilinear",
                                                 align_corners=False)[0]  # fmt: skip
        masks = (logits.sigmoid() > self.threshold).cpu().numpy()
        masks = masks[masks.reshape(len(masks), -1).any(1)]
        if not len(masks):
            raise ValueError(f"{name}: Mask2Former proposed no mask above {self.threshold}")
        return masks


class SamMasks:
    """SAM's automatic masks (transformers' mask-generation pipeline), as the multilingual variant uses."""

    def __init__(self, path: str, device: str = "cpu", points_per_batch: int = 64, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95):  # fmt: skip
        from transformers import pipeline

        self.pipe = pipeline("mask-generation", model=path, device=device)
        self.options = {"points_per_batch": points_per_batch, "pred_iou_thresh": pred_iou_thresh,
                        "stability_score_thresh": stability_score_thresh}  # fmt: skip

    def __call__(self, image, name: str) -> np.ndarray:
        masks = [np.asarray(m, dtype=bool) for m in self.pipe(image, **self.options)["masks"]]
        masks = [m for m in masks if m.shape == (image.height, image.width) and m.any()]
        if not masks:
            raise ValueError(f"{name}: SAM proposed no mask above its quality thresholds")
        return np.stack(masks)


def parse_proposals(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of a proposals spec; refused unless it is one of the known kinds."""
    kind, _, arg = spec.partition(":")
    if kind in ("disk", "mask2former", "sam") and arg:
        return kind, arg
    raise ValueError(
        f"unknown proposals {spec!r}; use disk:FOLDER (COCO RLE json or PNG masks per image), "
        "mask2former:CHECKPOINT or sam:CHECKPOINT"
    )


def proposals_fingerprint(spec: str) -> dict:
    """What identifies the proposals: the resolved folder of ``disk:`` masks (which must exist; their files
    are not hashed), or the checkpoint of a proposer (as :func:`agci.fingerprints.model_fingerprint`)."""
    from ..fingerprints import model_fingerprint

    kind, arg = parse_proposals(spec)
    if kind == "disk":
        if not Path(arg).is_dir():
            raise FileNotFoundError(f"proposals {spec!r}: {arg} is not a folder of masks")
        return {"kind": kind, "folder": str(Path(arg).resolve())}
    return {"kind": kind, **model_fingerprint(arg)}


def load_proposer(spec: str, device: str = "cpu"):
    """``disk:FOLDER`` (masks you bring), ``mask2former:CHECKPOINT`` or ``sam:CHECKPOINT``."""
    kind, arg = parse_proposals(spec)
    if kind == "disk":
        return DiskMasks(Path(arg))
    if kind == "mask2former":
        return Mask2FormerMasks(arg, device=device)
    return SamMasks(arg, device=device)


# -- scoring and choosing ----------------------------------------------------------------------------------
def global_scores(encoder: Encoder, image, masks: np.ndarray, text: torch.Tensor, v: float = 0.85) -> torch.Tensor:
    """Per mask: v x cos(masked crop, text) + (1 - v) x cos(masked whole image, text), times 100. Outside
    the mask is filled with the image's mean colour; the crop is the mask's bounding box."""
    from PIL import Image

    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    fill = pixels.reshape(-1, 3).mean(0)
    crops, wholes = [], []
    for m in masks:
        masked = np.where(m[..., None], pixels, fill).astype(np.uint8)
        ys, xs = np.nonzero(m)
        crops.append(Image.fromarray(masked[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]))
        wholes.append(Image.fromarray(masked))
    feats = encoder.image_features(crops + wholes)
    sims = feats @ text.to(feats.device)
    return (100 * (v * sims[: len(masks)] + (1 - v) * sims[len(masks) :])).cpu()


def _relation_score(text: str, masks: np.ndarray) -> np.ndarray | None:
    words = [RELATIONS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in RELATIONS]
    if not words:
        return None
    h, w = masks.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w]
    area = masks.reshape(len(masks), -1).sum(1).astype(float)
    feature = {"x": (masks * xs).reshape(len(masks), -1).sum(1) / area / max(1, w - 1),
               "y": (masks * ys).reshape(len(masks), -1).sum(1) / area / max(1, h - 1),
               "area": area / area.max()}  # fmt: skip
    score = np.zeros(len(masks))
    for axis, sign in words:
        f = feature[axis]
        score += f if sign > 0 else 1 - f
    return score / len(words)


def _scaled(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.ones_like(x)


@dataclass
class Choice:
    mask: np.ndarray
    index: int
    candidates: list[int]
    grid_map: torch.Tensor
    regions: list[torch.Tensor]


def select_candidates(scores: np.ndarray, overlaps: np.ndarray, mode: str = "full") -> list[int]:
    """Candidate mask indices: ``full``: the best global score, then the best-overlapping mask of each
    region (``overlaps[region, mask]`` IoU), without repeats; ``global``: the top 3 by global score;
    ``pmap``: the regions' best-overlapping masks only."""
    by_region = [int(np.argmax(row)) for row in overlaps]
    if mode == "global":
        picked = list(np.argsort(-scores, kind="stable")[:3])
    elif mode == "pmap":
        picked = by_region or [int(np.argmax(scores))]
    elif mode == "full":
        picked = [int(np.argmax(scores)), *by_region]
    else:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return list(dict.fromkeys(int(c) for c in picked))


def rerank(scores: np.ndarray, candidates: list[int], secondary: np.ndarray, alpha: float = 0.7) -> int:
    """The candidate with the best alpha x (global score scaled to [0, 1] among candidates) + (1 - alpha)
    x its secondary score (spatial relation words, or the map inside the mask)."""
    final = alpha * _scaled(scores[candidates].astype(float)) + (1 - alpha) * np.asarray(secondary, dtype=float)
    return candidates[int(np.argmax(final))]


def choose(encoder: Encoder, image, text: str, masks: np.ndarray, mode: str = "full", layer: int | None = None,
           normalise: str = "channel", k: int = 3, alpha: float = 0.7, v: float = 0.85,
           feature: torch.Tensor | None = None) -> Choice:  # fmt: skip
    """One mask for ``text``. Candidates: the best global score plus, per map region, the mask that
    overlaps it most (``full``); the top 3 by global score only (``global``); the region matches only
    (``pmap``). They are re-ranked by alpha x scaled global score + (1 - alpha) x the spatial-relation
    score of the words (left, right, top, bottom, big, small...) or, without such words, the map's
    mean inside the mask. ``feature`` (one normalised row) replaces the text feature, e.g. a
    mixed-language centroid."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    feature = text_feature(encoder, [text]) if feature is None else feature.reshape(1, -1)
    layer = default_layer(encoder) if layer is None else layer
    grid_map = spatial_map(encoder, encoder.patch_tokens([image]), feature, layer, normalise)[0]
    regions = cluster(grid_map, k=k)
    size = (image.height, image.width)
    full_map = upsample(grid_map, size).numpy()
    scores = global_scores(encoder, image, masks, feature[0], v).numpy()
    tensors = torch.from_numpy(masks)
    region_masks = [upsample(r.float(), size) > 0.5 for r in regions]
    overlaps = np.array([[mask_iou(t, r) for t in tensors] for r in region_masks]).reshape(len(regions), len(masks))
    candidates = select_candidates(scores, overlaps, mode)
    secondary = _relation_score(text, masks[candidates])
    if secondary is None:
        heat = _scaled(full_map)
        secondary = np.array([heat[m].mean() for m in masks[candidates]])
    best = rerank(scores, candidates, secondary, alpha)
    return Choice(masks[best], best, candidates, grid_map, regions)
