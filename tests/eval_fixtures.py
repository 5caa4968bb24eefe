"""Tiny local copies of the suite's benchmarks, in each benchmark's own schema, laid out as
``agci eval --data`` expects (``agci.eval.suite.BENCHMARKS``)."""

from __future__ import annotations

import json
from pathlib import Path


def _image(seed: int, size=(48, 40)):
    """Random pixels (a uniform image gives identical visual tokens, which AGCI leaves as they are)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _parquet(path: Path, rows: dict, image_columns=("image",)) -> None:
    from datasets import Dataset, Features, Image, Value

    features = {}
    for name, values in rows.items():
        if name in image_columns:
            features[name] = Image()
        elif isinstance(values[0], list):
            features[name] = [Value("string")]
        elif isinstance(values[0], int):
            features[name] = Value("int64")
        else:
            features[name] = Value("string")
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=Features(features)).to_parquet(str(path))


def write_benchmarks(root: Path, n: int = 4) -> Path:
    root = Path(root)
    _parquet(root / "pope" / "test.parquet", {
        "question_id": [str(i) for i in range(n)],
        "question": [f"Is there a {w} in the image?" for w in ("dog", "cat", "car", "cup")[:n]],
        "answer": ["yes", "no", "yes", "no"][:n],
        "image_source": [f"COCO_{i}" for i in range(n)],
        "category": ["adversarial", "popular", "random", "random"][:n],
        "image": [_image(i) for i in range(n)],
    })  # fmt: skip
    _parquet(root / "textvqa" / "validation.parquet", {
        "question_id": list(range(n)),
        "question": ["what is written on the sign?"] * n,
        "answers": [["stop"] * 10 for _ in range(n)],
        "ocr_tokens": [["stop"] for _ in range(n)],
        "image_id": [f"img{i}" for i in range(n)],
        "image": [_image(10 + i) for i in range(n)],
    })  # fmt: skip
    _parquet(root / "scienceqa_img" / "test.parquet", {
        "question": ["Which colour is the square?"] * n,
        "choices": [["red", "blue", "green"] for _ in range(n)],
        "answer": [i % 3 for i in range(n)],
        "hint": ["", "Look closely."] * (n // 2) + [""] * (n % 2),
        "task": ["closed choice"] * n,
        "subject": ["natural science"] * n,
        "image": [_image(20 + i) for i in range(n)],
    })  # fmt: skip
    for folder, options in (("mmmu_pro_standard_10", 10), ("mmmu_pro_standard_4", 4)):
        _parquet(root / folder / "test.parquet", {
            "id": [f"validation_Art_{i}" for i in range(n)],
            "question": ["<image 1> Which option names the colour?"] * n,
            "options": [str([f"colour {k}" for k in range(options)]) for _ in range(n)],
            "answer": ["ABCD"[i % 4] for i in range(n)],
            "subject": ["Art"] * n,
            "image_1": [_image(30 + i) for i in range(n)],
        }, image_columns=("image_1",))  # fmt: skip
    hb = [  # two questions asked about two figures each; VS figure 0 has no figure
        ("VD", "illusion", "0", "0", "0", "1"), ("VD", "illusion", "0", "1", "0", "0"),
        ("VS", "chart", "1", "0", "0", "1"), ("VS", "chart", "1", "1", "0", "0"),
    ][:n]  # fmt: skip
    _parquet(root / "hallusion_bench" / "image.parquet", {
        "category": [r[0] for r in hb], "subcategory": [r[1] for r in hb], "set_id": [r[2] for r in hb],
        "figure_id": [r[3] for r in hb], "question_id": [r[4] for r in hb], "gt_answer": [r[5] for r in hb],
        "visual_input": ["1"] * len(hb), "question": ["Is the left line longer than the right one?"] * len(hb),
        "gt_answer_details": ["details"] * len(hb), "filename": [f"f{i}.png" for i in range(len(hb))],
        "image": [_image(40 + i) for i in range(len(hb))],
    })  # fmt: skip
    crpe = root / "crpe"
    (crpe / "abnormal_images").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        _image(50 + i).save(crpe / "abnormal_images" / f"{i}.jpg")
    options = ["a dog", "a cat", "a horse", "a bird"]

    def block(category: str, qid: int, image: str, correct: int) -> list[dict]:
        rows = []
        for r in range(4):  # the 4 rotations of one question, as the official files hold them
            rotated = options[r:] + options[:r]
            text = "What is in the image?\n" + "\n".join(f"{'ABCD'[k]}. {o}" for k, o in enumerate(rotated))
            letter = "ABCD"[rotated.index(options[correct])]
            rows.append(
                {
                    "question_id": qid + r,
                    "image": image,
                    "text": text + "\nAnswer with the option's letter from the given choices directly.",
                    "correct_option": letter,
                    "category": category,
                }
            )
        return rows

    exist = block("exist", 0, "abnormal_images/0.jpg", 0) + block("exist", 4, "abnormal_images/1.jpg", 1)
    relation = [row for k, cat in enumerate(("subject", "predicate", "object"))
                for row in block(cat, 100 + 4 * k, f"abnormal_images/{k % 2}.jpg", k)]  # fmt: skip
    (crpe / "crpe_exist.jsonl").write_text("".join(json.dumps(r) + "\n" for r in exist))
    (crpe / "crpe_relation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in relation))
    return root
