"""Evaluation on RefCOCO, RefCOCO+ and RefCOCOg from the REFER files, and the picture of one example."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fingerprints import file_digest, model_fingerprint, versions
from ..images import read_image
from ..runs import RunFolder, drop_partial_line, save_figure, write_json, write_text
from .encoders import Encoder
from .pipeline import choose, load_proposer, proposals_fingerprint
from .spatial import summarise, upsample

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def refer_files(root: Path, dataset: str, split_by: str | None = None) -> tuple[Path, Path]:
    """``ROOT/<dataset>/refs(<split_by>).p`` and ``ROOT/<dataset>/instances.json``."""
    folder = Path(root) / dataset
    return folder / f"refs({split_by or SPLIT_BY.get(dataset)}).p", folder / "instances.json"


def refer_expressions(root: Path, dataset: str, split: str, split_by: str | None = None) -> list[dict]:
    """Expressions of one split: ``ROOT/<dataset>/refs(<split_by>).p`` and ``ROOT/<dataset>/instances.json``."""
    split_by = split_by or SPLIT_BY.get(dataset)
    refs_path, inst_path = refer_files(root, dataset, split_by)
    for p in (refs_path, inst_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found (REFER layout: ROOT/{dataset}/refs({split_by}).p and instances.json)"
            )
    from ..refer import read_refer

    out = [
        {"id": r.id, "sent_id": str(r.sentence["sent_id"]), "text": r.sentence.get("sent") or r.sentence["raw"],
         "image": r.image["file_name"], "height": r.image["height"], "width": r.image["width"],
         "segmentation": r.annotation["segmentation"]}
        for r in read_refer(refs_path, inst_path, (split,), annotation_keys=("segmentation",))
    ]  # fmt: skip
    if not out:
        raise ValueError(f"{refs_path}: no expressions in split {split!r}")
    return out


def ground_truth(expr: dict) -> np.ndarray:
    """The referred object's mask from its COCO segmentation (polygons or RLE)."""
    seg, h, w = expr["segmentation"], expr["height"], expr["width"]
    if isinstance(seg, list):
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (w, h), 0)
        for poly in seg:
            ImageDraw.Draw(canvas).polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
        return np.array(canvas, dtype=bool)
    from pycocotools import mask as rle

    if isinstance(seg.get("counts"), list):
        seg = rle.frPyObjects(seg, h, w)
    return rle.decode(seg).astype(bool)


def check_layer(layer: int | None) -> None:
    """``--layer`` of ``ris evaluate|show``: 1-based, refused in words before anything is read or written."""
    if layer is not None and layer < 1:
        raise ValueError(f"--layer {layer} is not a layer: layers are 1-based (1 is the first); omit --layer for "
                         "the default (two thirds up)")  # fmt: skip


@dataclass(frozen=True)
class RisConfig:
    """The inputs of one ``agci ris evaluate`` run (one split, in one language) and their checks: the numeric
    options are refused in words when the config is made, before anything is read or written."""

    model: str  # CLIP, SigLIP or SigLIP2 checkpoint folder or hub id
    refer_root: Path  # ROOT/<dataset>/refs(<split_by>).p and instances.json
    dataset: str  # refcoco, refcoco+ or refcocog
    split: str
    images: Path  # the COCO train2014 folder
    proposals: str  # disk:FOLDER, mask2former:CKPT or sam:CKPT
    out: Path  # results folder; splits and languages may share it
    mode: str = "full"  # full, global (global score only) or pmap (map regions only)
    layer: int | None = None  # 1-based layer of the map; None: two thirds up
    normalise: str = "channel"
    limit: int | None = None  # the first N expressions of the split
    device: str = "cpu"
    split_by: str | None = None  # None: unc, umd for refcocog
    translations: Path | None = None  # a CSV joined on sent_id, one column per language
    language: str | None = None  # a column of translations, or "centroid" (all of them)
    v: float | None = None  # crop vs whole-image weight of the global score; None: the dataset's (see weight)
    force: bool = False  # delete this result's files and start over

    def __post_init__(self):
        check_layer(self.layer)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: give the number of expressions to score, at least 1 (or omit "
                             "--limit)")  # fmt: skip
        if self.v is not None and not 0 <= self.v <= 1:
            raise ValueError(f"--v {self.v}: v weighs the masked crop against the masked whole image, so it lies in "
                             "[0, 1] (0.95 for RefCOCO/+, 0.85 for RefCOCOg)")  # fmt: skip

    @property
    def weight(self) -> float:
        """``v``, else the reference's: 0.95 for RefCOCO and RefCOCO+, 0.85 for RefCOCOg."""
        return self.v if self.v is not None else (0.85 if self.dataset == "refcocog" else 0.95)

    @property
    def stem(self) -> str:
        """The name of this run's files and of its entry in ``agci-run.json``: ``<dataset>_<split>[_<language>]``."""
        return f"{self.dataset}_{self.split}" + (f"_{self.language}" if self.language else "")


def _fingerprint(config: RisConfig) -> dict:
    """What defines the rows of ``<dataset>_<split>[_<language>]``: a rerun resumes only when all of it is the same.

    ``limit`` chooses which expressions are scored, not their values, and the device does not change them, so
    both may differ between runs. The images folder is not part of it (COCO's files do not change); the
    ``disk:`` proposals are identified by their folder, not their files' bytes."""
    c = config
    split_by = c.split_by or SPLIT_BY.get(c.dataset)
    return {**model_fingerprint(c.model), "proposals": proposals_fingerprint(c.proposals), "dataset": c.dataset,
            "split": c.split, "split_by": split_by,
            "refer": file_digest(*refer_files(c.refer_root, c.dataset, split_by)), "mode": c.mode,
            "layer": c.layer, "normalise": c.normalise, "v": c.weight,
            "translations": file_digest(c.translations) if c.translations is not None else None,
            "language": c.language, "versions": versions()}  # fmt: skip


def check_model(model: str, layer: int | None) -> None:
    """The checkpoint's config (no weights read): a supported family, and ``layer`` among its vision layers."""
    layers = Encoder.vision_layers_of(model)
    if layer is not None and not 1 <= layer <= layers:
        raise ValueError(f"--layer {layer} is out of range: {model} has vision layers 1..{layers}")


def evaluate(config: RisConfig) -> dict:
    """Score every expression of a split; ``out/<dataset>_<split>[_<language>].jsonl`` is written as it
    goes (a rerun with the same inputs skips what is there), then the ``.json`` summary with mIoU, oIoU and
    Prec@0.5:0.9 and a ``.md`` table.

    With ``translations`` (a CSV joined on ``sent_id``), ``language`` picks the column to ground with;
    ``language="centroid"`` grounds with the mixed-language centroid of all columns. ``v`` weighs the
    masked crop against the masked image in the global score (default as the reference: 0.95 for
    RefCOCO and RefCOCO+, 0.85 for RefCOCOg).

    ``out`` may hold several results (splits, languages); each is locked with the folder for the run and
    recorded in ``out/agci-run.json`` (see :mod:`agci.runs`): a rerun with other inputs (model, proposals,
    mode, layer, ...) is refused, and ``force`` deletes that result's files and starts over. The inputs are
    checked before anything is written or any weight is loaded."""
    c = config
    model, dataset, split, images, mode = c.model, c.dataset, c.split, c.images, c.mode
    translations, language, v = c.translations, c.language, c.weight
    from tqdm.auto import tqdm

    exprs = refer_expressions(c.refer_root, dataset, split, c.split_by)[: c.limit]
    languages, texts = [], {}
    if translations is not None:
        from .multilingual import read_translations

        languages, texts = read_translations(translations)
        missing = [e["sent_id"] for e in exprs if e["sent_id"] not in texts]
        if missing:
            raise ValueError(f"{translations}: no row for sent_id {missing[:5]} ({len(missing)} missing)")
        if language != "centroid" and language not in languages:
            raise ValueError(f"language {language!r} is not a column of {translations}; columns: {languages} "
                             "(or use centroid)")  # fmt: skip
    elif language is not None:
        raise ValueError("--language needs --translations (a CSV of translations joined on sent_id)")
    absent = sorted({e["image"] for e in exprs if not (Path(images) / e["image"]).is_file()})
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of the split are not in {images}, e.g. {absent[0]} "
                                "(--images is the COCO train2014 folder)")  # fmt: skip
    check_model(model, c.layer)
    stem, out = c.stem, Path(c.out)
    with RunFolder(out, stem, _fingerprint(c), outputs=(f"{glob.escape(stem)}.*",), force=c.force) as folder:
        encoder = Encoder.load(model, c.device)
        proposer = load_proposer(c.proposals, c.device)
        rows_path = out / f"{stem}.jsonl"
        drop_partial_line(rows_path)
        done = {}
        if rows_path.exists():
            for line in rows_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    done[row["id"]] = row
                except json.JSONDecodeError:
                    continue  # a damaged line: scored again
        with rows_path.open("a") as f:
            for expr in tqdm(exprs, desc=f"{dataset} {split}"):
                if expr["id"] in done:
                    continue
                image = read_image(Path(images) / expr["image"])
                text, feature = expr["text"], None
                if language == "centroid":
                    from .multilingual import centroid_features

                    by_language = {lang: [texts[expr["sent_id"]][lang]] for lang in languages}
                    feature = centroid_features(encoder, by_language)[0]
                elif language:
                    text = texts[expr["sent_id"]][language]
                    feature = encoder.text_features([text])
                choice = choose(encoder, image, text, proposer(image, expr["image"]), mode, c.layer, c.normalise, v=v,
                                feature=feature)  # fmt: skip
                truth = ground_truth(expr)
                row = {"id": expr["id"], "I": int((choice.mask & truth).sum()), "U": int((choice.mask | truth).sum()),
                       "candidates": len(choice.candidates)}  # fmt: skip
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[row["id"]] = row
        rows = [done[e["id"]] for e in exprs]
        summary = {"dataset": dataset, "split": split, "language": language or "original", "mode": mode,
                   "layer": c.layer, "normalise": c.normalise, "v": v, "model": str(model),
                   **summarise([r["I"] for r in rows], [r["U"] for r in rows])}  # fmt: skip
        write_json(out / f"{stem}.json", summary)
        table = ("| dataset | split | mode | mIoU | oIoU | Prec@0.5 | Prec@0.7 | Prec@0.9 |\n"
                 "|---|---|---|---|---|---|---|---|\n")  # fmt: skip
        table += (f"| {dataset} | {split} | {mode} | {summary['mIoU']:.4f} | {summary['oIoU']:.4f} | "
                  f"{summary['Prec@0.5']:.4f} | {summary['Prec@0.7']:.4f} | {summary['Prec@0.9']:.4f} |\n")  # fmt: skip
        write_text(out / f"{stem}.md", table)
        folder.finished()
    return summary


def picture(model: str, image_path: Path, text: str, proposals: str, out: Path, mode: str = "full",
            layer: int | None = None, normalise: str = "channel", device: str = "cpu") -> Path:  # fmt: skip
    """The image, the mid-layer map, its regions and the chosen mask, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_layer(layer)
    check_model(model, layer)
    if not Path(image_path).is_file():
        raise FileNotFoundError(f"--image {image_path} does not exist; give an image file")
    try:
        image = read_image(image_path)
    except OSError as exc:
        raise ValueError(f"--image {image_path} is not an image PIL can read ({exc}); give an image file") from exc
    encoder = Encoder.load(model, device)
    choice = choose(encoder, image, text, load_proposer(proposals, device)(image, Path(image_path).name), mode, layer,
                    normalise)  # fmt: skip
    size = (image.height, image.width)
    regions = np.zeros(size)
    for i, r in enumerate(choice.regions):
        regions[(upsample(r.float(), size) > 0.5).numpy()] = i + 1
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    axes[0].imshow(image)
    axes[0].set_title(text[:40])
    axes[1].imshow(upsample(choice.grid_map, size).numpy(), cmap="viridis")
    axes[1].set_title("mid-layer map")
    axes[2].imshow(regions, cmap="tab10", vmin=0, vmax=10)
    axes[2].set_title(f"regions ({len(choice.regions)})")
    axes[3].imshow(image)
    axes[3].imshow(np.ma.masked_where(~choice.mask, choice.mask), alpha=0.55, cmap="autumn")
    axes[3].set_title(f"chosen mask (of {len(choice.candidates)} candidates)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return out
