"""``agci demo``: AGCI in a small LLaVA, offline, in seconds on a CPU.

Builds a LLaVA (CLIP vision tower + Llama, random weights, seeded) from an embedded config, draws two
synthetic images, switches AGCI on in the model (``apply_agci``) and runs real forwards for a sweep of
lambdas set through the model's config. Writes ``demo.json`` (per-image weights, feature change,
batch invariance, change of the next-token distribution) and ``demo.png`` (images, per-token weight
maps, curves). Random weights show the mechanics, not what a trained model gains.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .configs import LAMBDA_KEY, using_lambda
from .demo_model import CLIP_MEAN, CLIP_STD, TINY_LLAVA
from .kernels import resolve_impl
from .kernels.reference import EPS
from .runs import save_figure, write_text


def synthetic_images(size: int = 224):
    """Two PIL images with different layouts: shapes on white, and coloured stripes."""
    from PIL import Image, ImageDraw

    shapes = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(shapes)
    draw.rectangle([16, 16, 96, 96], fill=(220, 30, 30))
    draw.ellipse([140, 140, 208, 208], fill=(30, 60, 220))
    stripes = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(stripes)
    for i, colour in enumerate([(30, 160, 60), (240, 200, 20), (30, 160, 60), (120, 40, 160)]):
        draw.rectangle([0, i * size // 4, size, (i + 1) * size // 4 - 8], fill=colour)
    return [shapes, stripes]


def to_pixel_values(images, size: int = 224) -> torch.Tensor:
    """CLIP preprocessing (resize, scale, normalise) without a processor download."""
    import numpy as np

    arrays = [np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0 for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def build_model(seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(LlavaConfig(**TINY_LLAVA)).eval()


def context_weights(tokens: torch.Tensor) -> torch.Tensor:
    """``w_i = 1 - cos(x_i, mean)`` for one image's tokens (the weight AGCI gives each token)."""
    t = tokens.double()
    g = t.mean(0)
    denom = t.norm(dim=1) * g.norm()
    return 1 - torch.where(denom > EPS, (t @ g) / denom.clamp_min(EPS), torch.zeros_like(denom))


@torch.no_grad()
def run_demo(out_dir: str | Path, lambdas=(0.0, 0.25, 0.5, 1.0), impl: str = "auto", seed: int = 0) -> dict:
    """AGCI switched on in the model itself (``apply_agci``), λ swept through the config, real forwards."""
    from .compat import image_features_per_image
    from .kernels import IMPL_ENV
    from .patches.lifecycle import apply_agci

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is an existing file, not a folder; give a folder path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise FileExistsError(f"--out {out_dir} cannot be made: a part of its path is a file ({exc.filename})") from exc
    model = build_model(seed)
    images = synthetic_images()
    pixel_values = to_pixel_values(images)
    features = image_features_per_image(model.get_image_features(pixel_values=pixel_values))  # stock
    lengths = [f.shape[0] for f in features]
    cfg = model.config
    input_ids = torch.tensor([[cfg.text_config.bos_token_id] + [cfg.image_token_index] * lengths[0] + [5, 6, 7]] * 2)
    apply_agci(model)

    def run(lam: float):
        with using_lambda(model, lam):
            logp = model(input_ids=input_ids, pixel_values=pixel_values).logits[:, -1].log_softmax(-1)
            batched = image_features_per_image(model.get_image_features(pixel_values=pixel_values))
            alone = [image_features_per_image(model.get_image_features(pixel_values=pixel_values[i : i + 1]))[0]
                     for i in range(len(images))]  # fmt: skip
        return logp, batched, alone

    previous_impl = os.environ.get(IMPL_ENV)
    if impl != "auto":
        os.environ[IMPL_ENV] = impl
    try:
        base = run(0.0)[0]
        weights = [context_weights(f) for f in features]
        sweep = []
        for lam in lambdas:
            logp, injected, alone = run(lam)
            kl = (base.exp() * (base - logp)).sum(-1)
            per_image = []
            for i, (x, y, y_alone) in enumerate(zip(features, injected, alone, strict=True)):
                g = x.mean(0, keepdim=True)
                per_image.append({
                    "image": i,
                    "relative_change": ((y - x).norm() / x.norm()).item(),
                    "mean_cos_to_context_before": torch.cosine_similarity(x, g).mean().item(),
                    "mean_cos_to_context_after": torch.cosine_similarity(y, g).mean().item(),
                    "max_diff_alone_vs_batched": (y - y_alone).abs().max().item(),
                    "kl_next_token_vs_lambda0": kl[i].item(),
                    "top1_token": int(logp[i].argmax()),
                })  # fmt: skip
            sweep.append({"lambda": lam, "images": per_image})
    finally:
        if previous_impl is None:
            os.environ.pop(IMPL_ENV, None)
        else:
            os.environ[IMPL_ENV] = previous_impl
    packed = torch.cat(features)
    summary = {
        "model": f"tiny LLaVA (CLIP 224px/14 + Llama), random weights, seed {seed}",
        "impl": resolve_impl(impl, packed),
        "tokens_per_image": lengths,
        "weights": [
            {"image": i, "mean": w.mean().item(), "std": w.std().item(), "min": w.min().item(), "max": w.max().item()}
            for i, w in enumerate(weights)
        ],
        "sweep": sweep,
    }
    write_text(out_dir / "demo.json", json.dumps(summary, indent=1))
    _plot(images, weights, sweep, out_dir / "demo.png")
    return summary


def _plot(images, weights, sweep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 4))
    for i, (im, w) in enumerate(zip(images, weights, strict=True)):
        axes[2 * i].imshow(im)
        axes[2 * i].set_title(f"image {i}")
        side = int(math.isqrt(w.numel()))
        shown = axes[2 * i + 1].imshow(w.view(side, side).numpy() if side * side == w.numel() else w[None].numpy())
        axes[2 * i + 1].set_title(f"image {i}: weight 1 - cos(x, g) per token")
        fig.colorbar(shown, ax=axes[2 * i + 1], fraction=0.046)
    for ax in axes[:4]:
        ax.set_xticks([])
        ax.set_yticks([])
    lams = [s["lambda"] for s in sweep]
    kl_axis = axes[4].twinx()
    for i in range(len(images)):
        axes[4].plot(lams, [s["images"][i]["relative_change"] for s in sweep], "o-", label=f"|dX|/|X|, image {i}")
        kls = [(s["lambda"], s["images"][i]["kl_next_token_vs_lambda0"]) for s in sweep if s["lambda"] > 0]
        if kls:
            kl_axis.plot(*zip(*kls, strict=True), "s--", color=f"C{i + 2}", label=f"KL to lambda 0, image {i}")
    kl_axis.set_yscale("log")
    kl_axis.set_ylabel("next-token KL (log)")
    axes[4].set_xlabel(LAMBDA_KEY)
    axes[4].set_ylabel("relative feature change")
    axes[4].set_title("feature change and next-token KL")
    axes[4].legend(fontsize=7, loc="upper left")
    kl_axis.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def print_summary(summary: dict) -> None:
    print(f"{summary['model']}; impl={summary['impl']}; tokens per image {summary['tokens_per_image']}")
    for w in summary["weights"]:
        print(f"  image {w['image']}: weight 1-cos(x,g) mean {w['mean']:.3f} (min {w['min']:.3f}, max {w['max']:.3f})")
    print("  lambda | image | |dX|/|X| | cos to g before -> after | KL next token | alone vs batched")
    for s in summary["sweep"]:
        for r in s["images"]:
            print(
                f"  {s['lambda']:6.2f} | {r['image']:5d} | {r['relative_change']:8.4f} | "
                f"{r['mean_cos_to_context_before']:.3f} -> {r['mean_cos_to_context_after']:.3f}        | "
                f"{r['kl_next_token_vs_lambda0']:.2e}      | {r['max_diff_alone_vs_batched']:.1e}"
            )
