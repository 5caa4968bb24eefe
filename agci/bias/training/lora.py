"""The AGCI paper's experiment in miniature: LoRA adapters on the embedded probe VLM, with and without AGCI.

The embedded model (``agci.bias.training.embedded``) learnt the probe with targets planted mostly in the centre
cell, so it answers well only there. Each seed fine-tunes two PEFT LoRA adapters from it on the same
balanced data (the target equally often in each of the nine cells), with the same steps, learning rate,
batch order and initialisation: one at lambda 0 (the LoRA baseline) and one with AGCI at lambda 0.5 (the
paper's setting). ``agci probe`` without ``--model`` then compares the base and both kinds of adapter.

    python -m agci.bias.training.lora                # every adapter into agci/bias/assets/: 7 min on 2 CPU cores
    python -m agci.bias.training.lora --seeds 0 --out /tmp/lora

Each adapter folder holds PEFT's files and ``agci-adapter.json`` (the lambda it was trained with, which the
probe uses, and how it was trained); ``training.json`` next to them records the whole run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from ...configs import LAMBDA_KEY, format_lambda, parse_lambdas, using_lambda
from ..shipped import ADAPTER_DIR, ADAPTER_RECORD, ASSET_DIR

SEEDS = (0, 1, 2)
LAMBDAS = (0.0, 0.5)  # the LoRA baseline and AGCI at the paper's lambda
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
DATA_SEED_OFFSET = 1000  # the balanced canvases of seed s are drawn with seed s + this (the probe set uses 0)


def adapter_name(lam: float, seed: int) -> str:
    return f"lora-lambda{format_lambda(lam)}-seed{seed}"


def balanced_data(processor, canvases: int, seed: int):
    """Yes and No questions about ``canvases`` nine-object canvases whose target cell is drawn uniformly:
    token ids (left padded), attention masks, pixel values (half precision to save memory), labels that
    train only the answer, and the colour and shape word ids of each cell (for the alignment loss)."""
    from tqdm.auto import tqdm

    from ..probe_sets import PROMPT
    from .canvases import draw_canvas, encode_rows, left_pad, object_pairs

    rng = random.Random(seed)
    pairs = object_pairs(seed)
    images: dict = {}
    chunks, words = [], []
    tok = processor.tokenizer
    for start in tqdm(range(0, canvases, 128), desc="rendering balanced canvases"):
        rows = []
        for _ in range(min(128, canvases - start)):
            by_cell, cell, absent, image = draw_canvas(rng, pairs, images, 9, [1] * 9)
            rows += [(PROMPT.format(caption=by_cell[cell]), "Yes", image),
                     (PROMPT.format(caption=absent), "No", image)]  # fmt: skip
            words += [[tok.convert_tokens_to_ids(c.split()[-2:]) for c in by_cell]] * 2
        ids, masks, pixels = encode_rows(processor, rows, answers=True)
        chunks.append((ids, masks, pixels.half()))
    pad = processor.tokenizer.pad_token_id
    ids = left_pad([c[0] for c in chunks], pad)
    masks = left_pad([c[1] for c in chunks], 0)
    pixels = torch.cat([c[2] for c in chunks])
    assistant = (ids == processor.tokenizer.convert_tokens_to_ids("ASSISTANT")).int().argmax(1)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    labels = torch.where(positions > assistant[:, None] + 1, ids, -100)  # the answer after "ASSISTANT :"
    return ids, masks, pixels, labels, torch.tensor(words)


def train_adapter(
    out: Path, lam: float, seed: int, data, steps: int, batch_size: int, lr: float, align_weight: float
) -> dict:
    """One LoRA adapter from the embedded base, trained at ``lam``; saved to ``out``. Returns its record."""
    import transformers
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from ...vlm import load_vlm

    base = load_vlm(ASSET_DIR, global_context_broadcast_lambda=0.0, dtype="float32").model
    torch.manual_seed(seed)  # the LoRA initialisation: the same for both lambdas of a seed
    model = get_peft_model(base, LoraConfig(**LORA))
    model.train()
    from .embedded import alignment_loss

    ids, masks, pixels, labels, words = data
    shown, lone = torch.ones(batch_size, 9), torch.zeros(batch_size, dtype=torch.bool)  # nine objects, always
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)  # the batch order: the same for both lambdas of a seed
    started, log = time.time(), []
    bar = tqdm(range(steps), desc=adapter_name(lam, seed))
    for step in bar:
        pick = torch.randint(len(ids), (batch_size,), generator=generator)
        with using_lambda(model, lam):
            batch_pixels = pixels[pick].float()
            loss = model(input_ids=ids[pick], attention_mask=masks[pick], pixel_values=batch_pixels,
                         labels=labels[pick]).loss  # fmt: skip
            if align_weight:
                loss = loss + align_weight * alignment_loss(model, batch_pixels, words[pick], shown, lone)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    record = {
        LAMBDA_KEY: lam, "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "align_weight": align_weight,
        "lora": LORA, "data": {"canvases": len(ids) // 2, "data_seed": seed + DATA_SEED_OFFSET,
                               "cell_weights": [1] * 9},
        "train_seconds": round(time.time() - started, 1), "loss_log": log,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }  # fmt: skip
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template: agci-adapter.json says it all
    (out / ADAPTER_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def record_results(folder: Path) -> dict:
    """Probe the base and every adapter in ``folder`` on the demo set (what ``agci probe`` with no model
    scores; position task) and write each model's per-cell accuracies and the seed comparison to
    ``folder/results.json``, which the tests reproduce."""
    import tempfile

    from ..runner import ProbeConfig, run_probe

    adapters = tuple(str(p) for p in sorted(folder.glob("*")) if (p / "adapter_config.json").is_file())
    with tempfile.TemporaryDirectory() as work:
        summary = run_probe(ProbeConfig(out=str(Path(work) / "probe"), adapters=adapters, tasks=("position",)))
    models = {}
    for label, entry in summary["models"].items():
        ((lam, tasks),) = entry["lambdas"].items()
        pos = tasks["position"]
        models[label] = {"lambda": lam, "accuracy": pos["accuracy"],
                         "positive_accuracy_per_cell": pos["positive_accuracy_per_cell"], **pos["bias"],
                         "cochran_p": pos["position_test"]["p_value"]}  # fmt: skip
    results = {"probe": "agci probe --tasks position (the demo set: synthetic:60, seed 0)", "models": models,
               "comparisons": summary.get("comparisons", {}), "versions": summary["versions"]}  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ADAPTER_DIR)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    parser.add_argument("--lambdas", default=",".join(map(format_lambda, LAMBDAS)), help="comma-separated lambdas")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--canvases", type=int, default=1500, help="balanced training canvases per seed")
    parser.add_argument(
        "--align-weight",
        type=float,
        default=0.0,
        help="weight of the visual-token / cell-word alignment loss, as in the base's training",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument(
        "--record-only", action="store_true", help="only probe the adapters already in --out and write results.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.record_only:
        record_results(args.out)
        return 0
    from .model import build_processor

    processor = build_processor()
    seeds = [int(s) for s in args.seeds.split(",")]
    lambdas = parse_lambdas(args.lambdas)
    started = time.time()
    runs = {}
    for seed in seeds:
        data = balanced_data(processor, args.canvases, seed + DATA_SEED_OFFSET)
        for lam in lambdas:
            name = adapter_name(lam, seed)
            record = train_adapter(
                args.out / name, lam, seed, data, args.steps, args.batch_size, args.lr, args.align_weight
            )
            runs[name] = {k: record[k] for k in (LAMBDA_KEY, "seed", "train_seconds")}
    command = " ".join(["python -m agci.bias.training.lora", *(sys.argv[1:] if argv is None else argv)])
    summary = {"command": command, "threads": args.threads,
               "seconds": round(time.time() - started, 1), "adapters": runs}  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    record_results(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
