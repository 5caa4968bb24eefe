"""The tiny probe VLM shipped with agci, and the script that trains it.

A LLaVA (CLIP vision tower at 42 px, 14 px patches -> 9 visual tokens, one per cell of the probe's
3 x 3 grid; a 3-layer Llama) with a
word-level tokenizer and a LLaVA-1.5 style chat template, saved as a normal transformers checkpoint
(``agci/bias/assets/tiny-probe-llava``) so that ``agci probe`` loads it through the same
``AutoProcessor`` / ``AutoAGCIModelForImageTextToText`` path as a real model.

It is trained on the synthetic position probe (canvases of 9 shapes, "is there a red circle?").
The cell that holds the target is drawn with weights that favour the centre and neglect the corners
(``CELL_WEIGHTS``), a data bias of the kind the AGCI paper blames; the probe then measures the
position bias it leaves. Batches alternate lambda 0 and ``--agci-lambda`` so the same weights serve
as the baseline (lambda 0) and as an AGCI-tuned model.

    python -m agci.bias.tiny_model --out agci/bias/assets/tiny-probe-llava
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from .probe_sets import POSITIONS, PROMPT, compose
from .synthetic import COLOURS, SHAPES, TEXTURES, captions, synthetic_pairs

ASSET_DIR = Path(__file__).parent / "assets" / "tiny-probe-llava"
IMAGE_SIZE = 42
PATCH = 14
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CELL_WEIGHTS = (1, 2, 1, 2, 4, 2, 1, 2, 1)  # how often the target sits in each cell during training
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _vocabulary() -> list[str]:
    import re

    questions = [cell_question(c) for c in range(9)]
    text = " ".join(
        [PROMPT, "USER ASSISTANT : Yes No yes no YES NO", *captions(True), *TEXTURES, *questions, WHOLE_IMAGE_QUESTION]
    )
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    return SPECIALS + words


def build_processor():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("<image>", "isolated"),
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no prefix in this vocabulary
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=512,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )  # fmt: skip
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )  # fmt: skip


def save_portable(model, processor, out: Path) -> None:
    """``save_pretrained`` both, then write the processor files in the forms transformers 4.57 reads too."""
    model.save_pretrained(out)
    processor.save_pretrained(out)
    from safetensors.torch import load_file, save_file

    weights = out / "model.safetensors"  # the hub's LLaVA key layout, which every version maps on load
    tensors = load_file(weights)
    renamed = {
        k.replace("vision_tower.", "vision_tower.vision_model.", 1)
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") else k: v
        for k, v in tensors.items()
    }  # fmt: skip
    save_file(renamed, weights, metadata={"format": "pt"})
    tok_path = out / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text())
    tok.update(tokenizer_class="PreTrainedTokenizerFast", additional_special_tokens=["<image>"],
               extra_special_tokens={"image_token": "<image>"})  # fmt: skip
    tok_path.write_text(json.dumps(tok, indent=2) + "\n")
    proc_path = out / "processor_config.json"
    proc = json.loads(proc_path.read_text())
    if "image_processor" in proc:  # 5.x nests it; 4.57 reads preprocessor_config.json
        (out / "preprocessor_config.json").write_text(json.dumps(proc.pop("image_processor"), indent=2) + "\n")
        proc_path.write_text(json.dumps(proc, indent=2) + "\n")


def build_model(processor, seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model", "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": PATCH, "projection_dim": 96,
        },
        text_config={
            "model_type": "llama", "vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 384,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "tie_word_embeddings": True,
        },
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config)


WHOLE_IMAGE_QUESTION = "What is in the image?"


def cell_question(cell: int) -> str:
    """The auxiliary training question: name the object in one cell."""
    return f"What is in the {POSITIONS[cell].replace('_', ' ')} cell?"


def _canvases(n: int, seed: int, weights, desc: str):
    """``n`` canvases: (captions by cell, target cell, absent caption, PIL canvas)."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    pairs = synthetic_pairs(max(4 * len(COLOURS) * len(SHAPES), 120), seed)
    images = {}
    out = []
    for _ in tqdm(range(n), desc=desc):
        chosen = []
        for p in rng.sample(pairs, len(pairs)):
            if all(p.caption != c.caption for c in chosen):
                chosen.append(p)
            if len(chosen) == 10:
                break
        on_canvas, absent = chosen[:9], chosen[9]
        cell = rng.choices(range(9), weights=weights)[0]
        for p in on_canvas:
            if p.id not in images:
                images[p.id] = p.load_image()
        others = iter(on_canvas[1:])
        by_cell = [on_canvas[0].caption if c == cell else next(others).caption for c in range(9)]
        out.append((by_cell, cell, absent.caption, compose([images[p.id] for p in on_canvas], cell, 840)))
    return out


def _encode(processor, rows, answers: bool):
    """Token ids, attention mask and pixel values for (prompt, answer, image) rows."""
    from .scoring import chat_messages

    texts, images = [], []
    for prompt, answer, image in rows:
        messages = chat_messages(prompt, answer if answers else None)
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=not answers))
        images.append(image)
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"], batch["pixel_values"]


def _left_pad(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value) for t in tensors])


@torch.no_grad()
def _accuracy_by_cell(model, processor, rows, cells, batch_size=64):
    yes = processor.tokenizer.convert_tokens_to_ids("Yes")
    no = processor.tokenizer.convert_tokens_to_ids("No")
    model.eval()
    hits = torch.zeros(9)
    counts = torch.zeros(9)
    for i in range(0, len(rows), batch_size):
        ids, mask, pixels = _encode(processor, rows[i : i + batch_size], answers=False)
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


def _alignment_loss(model, pixels, words, lone):
    """1 - cosine between each visual token after the projector and the summed embeddings of the colour
    and shape words of what its cell shows (a lone object: the mean token against its name).

    Yes/No matching has no first-order gradient (neither the caption nor the image alone predicts the
    answer), and without this loss it stays at chance. With it, Yes/No on lone objects reached 0.9
    held-out accuracy in 1000 steps; on 9-object canvases it has not left chance yet (see the README)."""
    from ..patches.versions import image_features_per_image

    feats = torch.stack(image_features_per_image(model.model.get_image_features(pixel_values=pixels)))
    target = model.get_input_embeddings()(words).sum(2)
    per_cell = 1 - torch.nn.functional.cosine_similarity(feats, target, dim=-1).mean(1)
    whole = 1 - torch.nn.functional.cosine_similarity(feats.mean(1), target[:, 0], dim=-1)
    return torch.where(lone, whole, per_cell).mean()


def train(
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pool: int,
    agci_lambda: float,
    save_every: int = 0,
    align_weight: float = 0.0,
    lone_yes_no: bool = False,
) -> dict:
    """Train on the probe question (Yes/No) mixed with two easier tasks that get the vision tower going
    (from scratch it otherwise stays ignored): naming a lone object that fills the image, and naming the
    object in one cell of a canvas, where the asked cell follows ``CELL_WEIGHTS`` like the target does."""
    from tqdm.auto import tqdm

    from ..patches.core import apply_agci

    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = build_processor()
    tok = processor.tokenizer
    model = build_model(processor, seed)
    apply_agci(model)
    canvases = _canvases(pool, seed, CELL_WEIGHTS, "rendering training canvases")
    rows, _ = _probe_rows(canvases)
    shown = [by_cell for by_cell, *_ in canvases for _ in range(2)]  # what each row's 9 cells show
    for by_cell, _, _, image in canvases:
        asked = rng.choices(range(9), weights=CELL_WEIGHTS)[0]
        rows.append((cell_question(asked), by_cell[asked], image))
        shown.append(by_cell)
    lone = [False] * len(rows)
    everything = captions()
    for pair in synthetic_pairs(pool // 2, seed + 2):
        image = pair.load_image()
        extra = [(WHOLE_IMAGE_QUESTION, pair.caption, image)]
        if lone_yes_no:
            other = rng.choice([c for c in everything if c != pair.caption])
            extra += [(PROMPT.format(caption=pair.caption), "Yes", image), (PROMPT.format(caption=other), "No", image)]
        rows += extra
        shown += [[pair.caption] * 9] * len(extra)
        lone += [True] * len(extra)
    words = torch.tensor([[tok.convert_tokens_to_ids(c.split()[-2:]) for c in cells] for cells in shown])
    lone = torch.tensor(lone)
    ids, masks, pixels = [], [], []
    for i in tqdm(range(0, len(rows), 256), desc="encoding"):
        a, m, b = _encode(processor, rows[i : i + 256], answers=True)
        ids.append(a)
        masks.append(m)
        pixels.append(b.half())
    ids, masks, pixels = _left_pad(ids, tok.pad_token_id), _left_pad(masks, 0), torch.cat(pixels)
    assistant = (ids == tok.convert_tokens_to_ids("ASSISTANT")).int().argmax(1)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    labels = torch.where(positions > assistant[:, None] + 1, ids, -100)  # the answer after "ASSISTANT :"
    held_out = _canvases(360, seed + 1, [1] * 9, "rendering held-out canvases")
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
        "align_weight": align_weight, "lone_yes_no": lone_yes_no,
    }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    bar = tqdm(range(steps), desc="training")
    for step in bar:
        pick = torch.randint(len(ids), (batch_size,), generator=generator)
        model.global_context_broadcast_lambda = agci_lambda if step % 2 else 0.0
        loss = model(input_ids=ids[pick], attention_mask=masks[pick], pixel_values=pixels[pick].float(),
                     labels=labels[pick]).loss  # fmt: skip
        if align_weight:
            loss = loss + align_weight * _alignment_loss(model, pixels[pick].float(), words[pick], lone[pick])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == steps - 1:
            entry = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - started, 1)}
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
    model.global_context_broadcast_lambda = 0.0
    acc0 = _accuracy_by_cell(model, processor, eval_rows, eval_cells)
    model.global_context_broadcast_lambda = agci_lambda
    acc1 = _accuracy_by_cell(model, processor, eval_rows, eval_cells)
    model.global_context_broadcast_lambda = 0.0
    record = {
        **setup, "steps_done": steps,
        "held_out_accuracy_by_cell": {"lambda_0": acc0, f"lambda_{agci_lambda}": acc1},
        "loss_log": log, "train_seconds": round(time.time() - started, 1),
    }  # fmt: skip
    _save(model, processor, out, record)
    return record


def _save(model, processor, out: Path, record: dict) -> None:
    import copy

    import transformers

    from ..patches.core import revert_agci

    snapshot = revert_agci(copy.deepcopy(model)).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_portable(snapshot, processor, out)
    record = {**record, "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=4000, help="training canvases (each asked Yes and No)")
    parser.add_argument("--agci-lambda", type=float, default=0.5)
    parser.add_argument(
        "--save-every", type=int, default=2000, help="write the checkpoint every N steps (0: at the end)"
    )
    parser.add_argument(
        "--align-weight",
        type=float,
        default=0.0,
        help="weight of the visual-token / caption-word alignment loss (default 0: the shipped model)",
    )
    parser.add_argument(
        "--lone-yes-no",
        action="store_true",
        help="also ask the Yes/No question about lone objects (not in the shipped model)",
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
        args.lone_yes_no,
    )
    print(json.dumps(record["held_out_accuracy_by_cell"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
