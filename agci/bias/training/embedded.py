"""Training the tiny probe VLM shipped with agci (the model itself: ``agci.bias.training.model``).

It is trained on the synthetic position probe ("is there a red circle?"), on canvases that grow from
1 object to the probe's 9 (a curriculum; from scratch on 9-object canvases it stays at chance), with an
auxiliary loss that aligns each visual token with the words of what its cell shows. The cell that holds
the target is drawn with weights that favour the centre and neglect the corners (``CELL_WEIGHTS``), a
data bias of the kind the AGCI paper blames; the probe then measures the position bias it leaves.
In the second half, batches alternate lambda 0 and ``--agci-lambda`` so the same weights serve as the
baseline (lambda 0) and as an AGCI-tuned model.

    python -m agci.bias.training.embedded --out agci/bias/assets/tiny-probe-llava
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from ...configs import format_lambda, using_lambda
from ..probe_sets import POSITIONS, PROMPT
from ..shipped import ASSET_DIR
from ..synthetic import synthetic_pairs
from .canvases import draw_canvas, draw_canvases, encode_rows, left_pad, object_pairs
from .model import WHOLE_IMAGE_QUESTION, build_model, build_processor, save_portable

CELL_WEIGHTS = (1, 3, 1, 3, 9, 3, 1, 3, 1)  # how often the target sits in each cell during training


@torch.no_grad()
def _accuracy_by_cell(model, processor, rows, cells, batch_size=64):
    yes = processor.tokenizer.convert_tokens_to_ids("Yes")
    no = processor.tokenizer.convert_tokens_to_ids("No")
    model.eval()
    hits = torch.zeros(9)
    counts = torch.zeros(9)
    for i in range(0, len(rows), batch_size):
        ids, mask, pixels = encode_rows(processor, rows[i : i + batch_size], answers=False)
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
        pred = ["Yes" if a > b else "No" for a, b in zip(logits[:, yes].tolist(), logits[:, no].tolist(), strict=False)]
        for (_, answer, _), cell, p in zip(rows[i : i + batch_size], cells[i : i + batch_size], pred, strict=False):
            counts[cell] += 1
            hits[cell] += p == answer
    model.train()
    return (hits / counts.clamp_min(1)).tolist()


def _probe_rows(canvases):
    rows, cells = [], []
    for by_cell, cell, absent, image in canvases:
        rows += [(PROMPT.format(caption=by_cell[cell]), "Yes", image), (PROMPT.format(caption=absent), "No", image)]
        cells += [cell, cell]
    return rows, cells


def alignment_loss(model, pixels, words, shown, lone):
    """1 - cosine between each visual token after the projector and the summed embeddings of the colour
    and shape words of what its cell shows (blank cells left out; a lone object: the mean token against
    its name).

    Yes/No matching has no first-order gradient (neither the caption nor the image alone predicts the
    answer); without this loss the model stays at chance even on lone objects."""
    from ...compat import image_features_per_image

    feats = torch.stack(image_features_per_image(model.model.get_image_features(pixel_values=pixels)))
    target = model.get_input_embeddings()(words).sum(2)
    per_cell = (1 - torch.nn.functional.cosine_similarity(feats, target, dim=-1)) * shown
    per_cell = per_cell.sum(1) / shown.sum(1).clamp_min(1)
    whole = 1 - torch.nn.functional.cosine_similarity(feats.mean(1), target[:, 0], dim=-1)
    return torch.where(lone, whole, per_cell).mean()


def _training_data(processor, pool: int, seed: int):
    """Encoded rows: Yes/No about canvases of 1 to 9 objects (``pool`` canvases, counts cycling), naming the
    only object of 1-object canvases, and naming lone objects that fill the image. Returns the tensors and
    each row's object count (0 for naming rows, which are always in the mix)."""
    from tqdm.auto import tqdm

    tok = processor.tokenizer
    rng = random.Random(seed)
    pairs = object_pairs(seed)
    images: dict = {}
    chunks, rows, objects, shown, lone = [], [], [], [], []

    def add(row, n: int, cells, alone: bool = False):
        rows.append(row)
        objects.append(n)
        shown.append(cells)
        lone.append(alone)
        if len(rows) == 256:
            chunks.append(encode_rows(processor, rows, answers=True))
            rows.clear()

    for i in tqdm(range(pool), desc="rendering training canvases"):
        n = 1 + i % 9
        by_cell, cell, absent, image = draw_canvas(rng, pairs, images, n, CELL_WEIGHTS)
        add((PROMPT.format(caption=by_cell[cell]), "Yes", image), n, by_cell)
        add((PROMPT.format(caption=absent), "No", image), n, by_cell)
        if n == 1:
            add((WHOLE_IMAGE_QUESTION, by_cell[cell], image), 0, by_cell)
    for pair in synthetic_pairs(max(1, pool // 6), seed + 2):
        add((WHOLE_IMAGE_QUESTION, pair.caption, pair.load_image()), 0, [pair.caption] * 9, alone=True)
    if rows:
        chunks.append(encode_rows(processor, rows, answers=True))
    ids = left_pad([c[0] for c in chunks], tok.pad_token_id)
    masks = left_pad([c[1] for c in chunks], 0)
    pixels = torch.cat([c[2].half() for c in chunks])
    pad = tok.pad_token_id
    words = torch.tensor([[tok.convert_tokens_to_ids(c.split()[-2:]) if c else [pad, pad] for c in cells]
                          for cells in shown])  # fmt: skip
    present = torch.tensor([[c is not None for c in cells] for cells in shown], dtype=torch.float32)
    return ids, masks, pixels, words, present, torch.tensor(lone), torch.tensor(objects)


def train(
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pool: int,
    agci_lambda: float,
    save_every: int = 0,
    align_weight: float = 1.0,
    curriculum: float = 0.4,
    agci_from: float = 0.5,
) -> dict:
    """Train on the probe's Yes/No question with a curriculum over the number of objects on the canvas:
    canvases of up to 1 object at first, up to 9 after ``curriculum`` of the steps. Naming the object of
    1-object canvases and of lone images, and the alignment loss, get the vision tower going. After
    ``agci_from`` of the steps, batches alternate lambda 0 and ``agci_lambda`` (from the start, the
    alternation keeps the model at chance: the injected mean shifts the visual tokens between steps)."""
    from tqdm.auto import tqdm

    from ...patches.lifecycle import apply_agci

    torch.manual_seed(seed)
    processor = build_processor()
    tok = processor.tokenizer
    model = build_model(processor, seed)
    apply_agci(model, global_context_broadcast_lambda=0.0)  # saved checkpoints say lambda 0
    ids, masks, pixels, words, present, lone, objects = _training_data(processor, pool, seed)
    assistant = (ids == tok.convert_tokens_to_ids("ASSISTANT")).int().argmax(1)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    labels = torch.where(positions > assistant[:, None] + 1, ids, -100)  # the answer after "ASSISTANT :"
    held_out = draw_canvases(360, seed + 1, [1] * 9, "rendering held-out canvases")
    eval_rows, eval_cells = _probe_rows(held_out)

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    model.train()
    log = []
    setup = {
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "pool_canvases": pool,
        "agci_lambda_in_training": agci_lambda, "cell_weights": CELL_WEIGHTS, "positions": POSITIONS,
        "align_weight": align_weight, "curriculum": curriculum, "agci_from": agci_from,
    }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    bar = tqdm(range(steps), desc="training")
    for step in bar:
        most = 9 if curriculum <= 0 else min(9, 1 + int(8 * step / (curriculum * steps)))
        allowed = torch.nonzero(objects <= most).squeeze(1)
        pick = allowed[torch.randint(len(allowed), (batch_size,), generator=generator)]
        batch_pixels = pixels[pick].float()
        with using_lambda(model, agci_lambda if step % 2 and step >= agci_from * steps else 0.0):
            loss = model(input_ids=ids[pick], attention_mask=masks[pick], pixel_values=batch_pixels,
                         labels=labels[pick]).loss  # fmt: skip
            if align_weight:
                loss = loss + align_weight * alignment_loss(model, batch_pixels, words[pick], present[pick],
                                                             lone[pick])  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == steps - 1:
            entry = {"step": step, "objects_up_to": most, "loss": round(loss.item(), 4),
                     "seconds": round(time.time() - started, 1)}  # fmt: skip
            if step % 1000 == 0 or step == steps - 1:
                entry["held_out_accuracy"] = round(
                    sum(_accuracy_by_cell(model, processor, eval_rows[:240], eval_cells[:240])) / 9, 3
                )
            log.append(entry)
            bar.write(json.dumps(entry))
        if save_every and step and step % save_every == 0:
            accuracy = {"lambda_0": _accuracy_by_cell(model, processor, eval_rows, eval_cells)}
            _save(
                model,
                processor,
                out,
                {**setup, "steps_done": step, "held_out_accuracy_by_cell": accuracy, "loss_log": log},
            )
        bar.set_postfix(loss=f"{loss.item():.3f}")
    acc0 = _accuracy_by_cell(model, processor, eval_rows, eval_cells)
    with using_lambda(model, agci_lambda):
        acc1 = _accuracy_by_cell(model, processor, eval_rows, eval_cells)
    record = {
        **setup, "steps_done": steps,
        "held_out_accuracy_by_cell": {"lambda_0": acc0, f"lambda_{format_lambda(agci_lambda)}": acc1},
        "loss_log": log, "train_seconds": round(time.time() - started, 1),
    }  # fmt: skip
    _save(model, processor, out, record)
    return record


def _save(model, processor, out: Path, record: dict) -> None:
    import copy

    import transformers

    from ...patches.lifecycle import revert_agci

    snapshot = revert_agci(copy.deepcopy(model)).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_portable(snapshot, processor, out)
    record = {**record, "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=12000, help="training canvases (each asked Yes and No)")
    parser.add_argument("--agci-lambda", type=float, default=0.5)
    parser.add_argument(
        "--save-every", type=int, default=4000, help="write the checkpoint every N steps (0: at the end)"
    )
    parser.add_argument(
        "--align-weight", type=float, default=1.0, help="weight of the visual-token / caption-word alignment loss"
    )
    parser.add_argument(
        "--curriculum",
        type=float,
        default=0.4,
        help="fraction of the steps over which canvases grow from 1 to 9 objects (0: 9 from the start)",
    )
    parser.add_argument(
        "--agci-from",
        type=float,
        default=0.5,
        help="fraction of the steps after which batches alternate lambda 0 and --agci-lambda",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = train(
        args.out,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.pool,
        args.agci_lambda,
        args.save_every,
        args.align_weight,
        args.curriculum,
        args.agci_from,
    )
    print(json.dumps(record["held_out_accuracy_by_cell"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
