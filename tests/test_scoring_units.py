"""agci.bias.model_runs piece by piece: answer tokens, parsing, masked copies, feature arguments, tile grouping, and the
defaults and arguments of the occlusion maps, on hand-made inputs and the embedded tiny LLaVA."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import types

import pytest
import torch
from PIL import Image

from agci.bias import model_runs
from agci.bias.shipped import ASSET_DIR
from agci.bias.training.model import WHOLE_IMAGE_QUESTION
from agci.registry import FAMILIES

YES_NO_PROMPT = "Is there a red circle in the image? Answer yes or no."


@pytest.fixture(scope="module")
def vlm():
    return model_runs.load_probe_vlm(ASSET_DIR)


def _image(side: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8).numpy())


# answer tokens


class WordTokenizer:
    """Whole known words are one token each; anything else is one token per character. Id 0 is BOS."""

    def __init__(self, words):
        self.vocab = ["<s>", *words]

    def _id(self, piece):
        if piece not in self.vocab:
            self.vocab.append(piece)
        return self.vocab.index(piece)

    def encode(self, text, add_special_tokens=True):
        if text in self.vocab:
            ids = [self._id(text)]
        elif text.strip() in ("YES", "NO"):  # no token of their own, and nothing for the bare word
            ids = [] if text == text.strip() else [self._id(c) for c in text.strip()]
        else:
            ids = [self._id(c) for c in text]
        return [0, *ids] if add_special_tokens else ids

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def test_answer_token_ids_collects_first_tokens_in_order_without_special_tokens_or_repeats():
    tok = WordTokenizer(["Yes", " Yes", "yes", " yes", "No", " No", "no", " no"])
    ids = {w: tok.vocab.index(w) for w in ["Yes", " Yes", "yes", " yes", "No", " No", "no", " no"]}
    yes, no = model_runs.answer_token_ids(tok)
    # "YES" alone encodes to nothing (skipped, " YES" still tried); " YES" to "Y", "E", "S": its first
    # token "Y" is not the word
    assert yes == [ids["Yes"], ids[" Yes"], ids["yes"], ids[" yes"]]
    assert no == [ids["No"], ids[" No"], ids["no"], ids[" no"]]


def test_answer_token_ids_reads_a_variant_whose_bare_word_has_no_token():
    tok = WordTokenizer(["Yes", "No", " YES"])
    yes, no = model_runs.answer_token_ids(tok)
    assert yes == [tok.vocab.index("Yes"), tok.vocab.index(" YES")] and no == [tok.vocab.index("No")]


def test_answer_token_ids_with_the_same_token_for_both_words_is_refused():
    tok = WordTokenizer(["Yes", "No"])
    tok.vocab[tok.vocab.index("No")] = "yes"  # "No" now decodes as "yes": a token in both lists
    with pytest.raises(ValueError, match=r"no distinct single tokens for Yes/No .*; use --generate to score"):
        model_runs.answer_token_ids(tok)


@pytest.mark.parametrize("words", [["Yes", "yes"], ["No", "no"]])
def test_answer_token_ids_without_one_of_the_words_is_refused(words):
    with pytest.raises(ValueError, match="use --generate"):
        model_runs.answer_token_ids(WordTokenizer(words))


# parsing


@pytest.mark.parametrize(
    ("text", "want"),
    [("(Yes)", "Yes"), ("[no]", "No"), ("`yes`", "Yes"), ('"No."', "No"), ("*Yes*!", "Yes"), ("  no: it is not", "No"),
     ("Yes, it is", "Yes"), ("No it is not", "No"), ("Xyes", "Unknown"), ("NoX", "Unknown"), ("yes)]", "Yes")],
)  # fmt: skip
def test_parse_answer_reads_the_first_word_between_quotes_and_brackets(text, want):
    assert model_runs.parse_answer(text) == want


# masked copies


def _two_by_four():
    """A 4 x 2 (w x h) RGB image whose pixel (x, y) is (x, y, 7)."""
    pixels = torch.tensor([[[x, y, 7] for x in range(4)] for y in range(2)], dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_masked_tensors_paint_each_square_row_by_row():
    copies = list(model_runs.masked_tensors(_two_by_four(), 2, colour=(200, 100, 50)))
    assert len(copies) == 2 and all(c.dtype == torch.uint8 and c.shape == (3, 2, 4) for c in copies)
    fill = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1)
    left, right = copies
    assert torch.equal(left[:, :, 0], fill.expand(3, 2)) and torch.equal(left[:, :, 1], fill.expand(3, 2))
    assert left[:, 0, 2].tolist() == [2, 0, 7] and left[:, 1, 3].tolist() == [3, 1, 7]  # untouched
    assert right[:, 0, 0].tolist() == [0, 0, 7] and right[:, 1, 1].tolist() == [1, 1, 7]
    assert torch.equal(right[:, :, 2:], fill.view(3, 1, 1).expand(3, 2, 2))


def test_masked_tensors_of_a_taller_image_go_down_the_rows():
    image = Image.new("RGB", (2, 4), (1, 2, 3))
    tops = [(c[0] == 255).nonzero()[:, 0].unique().tolist() for c in model_runs.masked_tensors(image, 2)]
    assert tops == [[0, 1], [2, 3]]


def test_masked_tensors_convert_a_grey_image_to_rgb():
    _, right = model_runs.masked_tensors(Image.new("L", (4, 2), 9), 2, colour=(0, 0, 0))
    assert right.shape == (3, 2, 4)
    assert right[:, :, :2].flatten().tolist() == [9] * 12 and right[:, :, 2:].flatten().tolist() == [0] * 12


@pytest.mark.parametrize("size", [(4, 3), (3, 4)])
def test_a_mask_that_does_not_divide_both_sides_is_refused(size):
    with pytest.raises(ValueError, match=rf"mask size 2 must divide the image size {size[0]}x{size[1]}"):
        list(model_runs.masked_tensors(Image.new("RGB", size), 2))


def test_masked_copies_are_pil_images_with_the_colour():
    first = next(model_runs.masked_copies(_two_by_four(), 2, colour=(200, 100, 50)))
    assert first.size == (4, 2)
    assert first.getpixel((0, 0)) == (200, 100, 50) and first.getpixel((2, 1)) == (2, 1, 7)


# image-feature arguments and tile grouping


def test_feature_kwargs_pass_the_image_inputs_the_family_record_names():
    inputs = {"pixel_values": 1, "image_sizes": 2, "image_grid_thw": 3, "pixel_attention_mask": 4,
              "image_position_ids": 5, "input_ids": 6}  # fmt: skip
    for model_type, family in FAMILIES.items():
        expected = {k: inputs[k] for k in family.image_inputs}
        assert model_runs._feature_kwargs(_family_vlm(model_type), inputs) == expected, model_type
    assert model_runs._feature_kwargs(_family_vlm("llava_next"), inputs) == {"pixel_values": 1, "image_sizes": 2}
    assert model_runs._feature_kwargs(_family_vlm("qwen2_5_vl"), inputs) == {"pixel_values": 1, "image_grid_thw": 3}
    assert model_runs._feature_kwargs(_family_vlm("idefics3"), inputs) == {"pixel_values": 1, "pixel_attention_mask": 4}
    assert model_runs._feature_kwargs(_family_vlm("llava"), inputs) == {"pixel_values": 1}
    # an input the processor did not give is left out
    assert model_runs._feature_kwargs(_family_vlm("qwen2_5_vl"), {"pixel_values": 1}) == {"pixel_values": 1}


def _family_vlm(model_type):
    config = types.SimpleNamespace(model_type=model_type, image_token_id=9)
    return types.SimpleNamespace(model=types.SimpleNamespace(config=config))


def test_group_tiles_joins_internvl_tiles_by_the_image_token_runs():
    tiles = tuple(torch.full((2, 3), float(i)) for i in range(3))  # 3 tiles of 2 tokens
    ids = torch.tensor([[5, 9, 9, 9, 9, 5, 9, 9]])  # an image of 2 tiles, then one of 1
    first, second = model_runs._group_tiles(_family_vlm("internvl"), {"input_ids": ids}, tiles, 2)
    assert first[:, 0].tolist() == [0, 0, 1, 1] and second[:, 0].tolist() == [2, 2]
    assert first.shape == (4, 3)
    per_image = [torch.zeros(2, 3), torch.ones(1, 3)]
    assert model_runs._group_tiles(_family_vlm("llava"), {}, per_image, 2) == per_image  # one entry per image


def test_group_tiles_refuses_features_that_do_not_make_the_images():
    tiles = tuple(torch.zeros(2, 3) for _ in range(3))
    ids = torch.tensor([[5, 9, 9, 5, 9, 9, 5, 9, 9]])  # three images of one tile
    with pytest.raises(ValueError, match="internvl: got 3 feature sets for 2 images"):
        model_runs._group_tiles(_family_vlm("internvl"), {"input_ids": ids}, tiles, 2)
    with pytest.raises(ValueError, match="llava: got 3 feature sets for 2 images"):
        model_runs._group_tiles(_family_vlm("llava"), {}, list(tiles), 2)


# loading


def test_load_probe_vlm_passes_its_arguments_on():
    from agci.vlm import load_config

    config = load_config(ASSET_DIR)
    config.global_context_broadcast_lambda = 0.375
    vlm = model_runs.load_probe_vlm(ASSET_DIR, dtype="bfloat16", attn="eager", config=config)
    assert next(vlm.model.parameters()).dtype == torch.bfloat16
    assert vlm.model.config._attn_implementation == "eager"
    assert vlm.model.config.global_context_broadcast_lambda == 0.375
    assert vlm.yes_ids and vlm.no_ids
    on_meta = model_runs.load_probe_vlm(ASSET_DIR, device="meta", yes_no=False)
    assert next(on_meta.model.parameters()).device.type == "meta" and on_meta.yes_ids == on_meta.no_ids == []
    placed = model_runs.load_probe_vlm(ASSET_DIR, device="meta", device_map="cpu")  # device_map wins over device
    assert next(placed.model.parameters()).device.type == "cpu"


# generation and occlusion


def test_generate_answers_stops_at_max_new_tokens(vlm):
    (answer,) = model_runs.generate_answers(vlm, [_image(42)], [WHOLE_IMAGE_QUESTION], max_new_tokens=1)
    assert len(answer["answer_ids"]) == 1
    assert answer["generated"] == vlm.tokenizer.decode(answer["answer_ids"])


def _forward_rows(vlm):
    """Rows of each forward of ``vlm.model``, as a list filled while the hook is on."""
    rows = []
    handle = vlm.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return rows, handle


def test_occlusion_map_defaults_42_pixel_squares_32_per_forward(vlm):
    image = _image(252)  # 6 x 6 squares of 42 pixels
    answer = model_runs.generate_answers(vlm, [image], [YES_NO_PROMPT], max_new_tokens=1)[0]["answer_ids"]
    rows, handle = _forward_rows(vlm)
    try:
        base, drops = model_runs.occlusion_map(vlm, image, YES_NO_PROMPT, answer)
        assert rows == [1, 32, 4] and drops.shape == (6, 6)
        rows.clear()
        maps = model_runs.occlusion_maps(vlm, image, YES_NO_PROMPT, {0.0: answer})
        assert rows == [1, 32, 4] and maps[0.0][1].shape == (6, 6)
        rows.clear()
        model_runs.occlusion_map(vlm, _image(84), YES_NO_PROMPT, answer, mask=28, batch_size=4)
        assert rows == [1, 4, 4, 1]
    finally:
        handle.remove()
    torch.testing.assert_close(maps[0.0][1], drops)


def test_occlusion_maps_prepare_on_the_worker_thread_only_when_asked(vlm):
    seen = []
    processor = vlm.processor

    class Recording:
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, *args, **kwargs):
            seen.append(threading.current_thread().name)
            return processor(*args, **kwargs)

    recording = dataclasses.replace(vlm, processor=Recording())
    answer = [vlm.yes_ids[0]]
    model_runs.occlusion_map(recording, _image(84), YES_NO_PROMPT, answer, prefetch=0)
    model_runs.occlusion_maps(recording, _image(84), YES_NO_PROMPT, {0.0: answer}, prefetch=0)
    assert seen and all(name == threading.main_thread().name for name in seen)
    seen.clear()
    model_runs.occlusion_map(recording, _image(84), YES_NO_PROMPT, answer, prefetch=1)
    assert any(name.startswith("agci-prefetch") for name in seen)


def test_occlusion_by_generation_reads_the_greedy_answers_own_log_probability(vlm):
    image = _image(84, seed=3)
    answer = model_runs.generate_answers(vlm, [image], [WHOLE_IMAGE_QUESTION], max_new_tokens=2)[0]["answer_ids"]
    assert len(answer) == 2
    config = vlm.model.generation_config
    saved = config.do_sample, config.temperature
    config.do_sample, config.temperature = True, 5.0  # a checkpoint that samples by default: greedy is asked for
    try:
        base, drops = model_runs.occlusion_map_by_generation(vlm, image, WHOLE_IMAGE_QUESTION, max_new_tokens=2)
        (again,) = model_runs.generate_answers(vlm, [image], [WHOLE_IMAGE_QUESTION], max_new_tokens=2)
    finally:
        config.do_sample, config.temperature = saved
    assert drops.shape == (2, 2)  # the default mask: 42 pixels
    assert again["answer_ids"] == answer
    expected = model_runs.answer_logprob(vlm, [image], WHOLE_IMAGE_QUESTION, answer)[0].item()
    assert base == pytest.approx(expected, abs=1e-4)


def test_occlusion_by_generation_without_answer_tokens_is_refused(vlm):
    image = _image(84)
    (first,) = model_runs.generate_answers(vlm, [image], [YES_NO_PROMPT], max_new_tokens=1)[0]["answer_ids"]
    processor = copy.deepcopy(vlm.processor)
    processor.tokenizer.pad_token = processor.tokenizer.convert_ids_to_tokens(first)  # the answer reads as padding
    silent = dataclasses.replace(vlm, processor=processor)
    with pytest.raises(ValueError, match="^the model generated no answer tokens for the unmasked image$"):
        model_runs.occlusion_map_by_generation(silent, image, YES_NO_PROMPT, max_new_tokens=1)


def test_similarity_pools_by_max_by_default(vlm):
    images, captions = [_image(42, 1), _image(42, 2)], ["red circle", "blue square"]
    assert model_runs.similarity(vlm, images, captions) == model_runs.similarity(vlm, images, captions, pooling="max")


def test_prefetched_pulls_one_item_ahead_by_default():
    pulled = []

    def source():
        for i in range(10):
            pulled.append(i)
            yield i

    items = model_runs.prefetched(lambda i: 10 * i, source())
    assert next(items) == 0 and pulled == [0, 1, 2]  # the current item, one being prepared, one queued
    assert next(items) == 10 and pulled == [0, 1, 2, 3]
    pulled.clear()
    items = model_runs.prefetched(lambda i: 10 * i, source(), ahead=2)
    assert next(items) == 0 and pulled == [0, 1, 2, 3]


def test_occlusion_maps_prepare_one_batch_ahead_by_default(vlm):
    calls = []
    processor = vlm.processor

    class Counting:
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return processor(*args, **kwargs)

    counting = dataclasses.replace(vlm, processor=Counting())
    seen_at_forwards = []

    def hook(module, args, kwargs):
        if len(seen_at_forwards) < 2:
            time.sleep(0.3)  # let the worker finish what it was given
        seen_at_forwards.append(len(calls))

    answer = [vlm.yes_ids[0]]
    handle = vlm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for occlusion in (
            model_runs.occlusion_map,
            lambda *a, **k: model_runs.occlusion_maps(*a[:3], {0.0: a[3]}, **k),
        ):
            seen_at_forwards.clear()
            calls.clear()
            occlusion(counting, _image(84), YES_NO_PROMPT, answer, mask=21, batch_size=4)  # 4 batches of 4
            # at the first masked forward: the unmasked input, the batch scored, one being prepared, one queued
            assert seen_at_forwards[:2] == [1, 4]
    finally:
        handle.remove()


def _counting_forwards(vlm):
    count = []
    return count, vlm.model.register_forward_pre_hook(lambda module, args: count.append(1))


def test_generation_runs_max_new_tokens_steps_128_by_default(vlm):
    config = vlm.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None  # no end token: every generation runs its full length
    count, handle = _counting_forwards(vlm)
    try:
        model_runs.generate_answers(vlm, [_image(42)], [WHOLE_IMAGE_QUESTION])
        assert len(count) == 128
        count.clear()
        model_runs.occlusion_map_by_generation(vlm, _image(84), WHOLE_IMAGE_QUESTION, max_new_tokens=2)
        assert len(count) == 2 * (1 + 1 + 4)  # the answer, the unmasked score and 4 masked copies
    finally:
        handle.remove()
        config.eos_token_id = saved


def test_feature_kwargs_pass_gemma4s_patch_positions():
    inputs = {"pixel_values": 1, "image_position_ids": 5, "input_ids": 6}
    assert model_runs._feature_kwargs(_family_vlm("gemma4"), inputs) == {"pixel_values": 1, "image_position_ids": 5}


# Idefics3-style rows (image token 9): <row> crop runs, then <global-img>=50 and the global view; 0 pads
_CROPS_THEN_GLOBAL = [0, 0, 0, 0, 1, 7, 9, 9, 50, 9, 9, 3, 50, 9, 9, 3]  # image of 1 crop + global, image of global
_ONE_IMAGE = [1, 7, 9, 9, 8, 9, 9, 50, 9, 9, 3, 4, 4, 4, 4, 4]  # 2 crops + global


def test_group_tiles_splits_each_sample_of_a_global_view_family_into_its_images():
    ids = torch.tensor([_CROPS_THEN_GLOBAL, _ONE_IMAGE])
    per_sample = [torch.arange(12.0).view(6, 2), 100 + torch.arange(12.0).view(6, 2)]  # Idefics3: [tokens, D]
    images = model_runs._group_tiles(_family_vlm("idefics3"), {"input_ids": ids}, per_sample, 3)
    assert [i.shape[0] for i in images] == [4, 2, 6]
    assert torch.equal(images[0], per_sample[0][:4]) and torch.equal(images[2], per_sample[1])
    # Aya Vision: one row per tile of the whole batch (6 tiles of 2 tokens), more rows than samples
    tiles = torch.arange(24.0).view(6, 2, 2)
    images = model_runs._group_tiles(_family_vlm("aya_vision"), {"input_ids": ids}, list(tiles), 3)
    assert [i.shape[0] for i in images] == [4, 2, 6]
    assert torch.equal(images[1], tiles[2]) and torch.equal(images[2], tiles[3:].reshape(6, 2))
    # Aya Vision on transformers 5.6 and older: one 4-D [tiles, h, w, D] tensor
    images = model_runs._group_tiles(_family_vlm("aya_vision"), {"input_ids": ids}, [tiles.view(6, 1, 2, 2)], 3)
    assert [i.shape for i in images] == [(4, 2), (2, 2), (6, 2)] and torch.equal(images[1], tiles[2])
    # samples of different lengths cannot be stacked: the per-sample path
    uneven = [torch.zeros(6, 2), torch.zeros(4, 2)]
    short = torch.tensor([_CROPS_THEN_GLOBAL, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 50, 9, 9, 9, 9]])
    assert [i.shape[0] for i in model_runs._group_tiles(_family_vlm("idefics3"), {"input_ids": short}, uneven, 3)] == [
        4, 2, 4]  # fmt: skip
