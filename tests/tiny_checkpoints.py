"""Tiny random checkpoints saved to disk with a working processor (tokenizer, image processor, chat
template), so that tools which load by path (lmms-eval) run on them offline."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from vlm_cases import CONFIGS

from agci import compat

WORDS = (
    "a an the is are there in on of to and what which who where how many image picture colour color "
    "left right top bottom center sign written say answer question option letter choice given directly "
    "with only word phrase single using from red blue green yellow black white dog cat car cup man woman "
    "line longer shorter than one two three four yes no Yes No A B C D E F G H I J . , ? ! : ( ) ' \" 0 1 2 3 4 5"
).split()

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(specials: dict[str, int], vocab_size: int, named: dict[str, str] | None = None, cls=None):
    """A word-level tokenizer over WORDS with ``specials`` at fixed ids; ``named`` gives special tokens
    the attribute names a processor reads (``image_token`` -> ``tokenizer.image_token(_id)``); ``cls``, a
    fast tokenizer class for processors that check the class (Qwen's on transformers 4.x)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **specials}
    taken = set(vocab.values())  # a set: Qwen-sized vocabularies (152k ids) would take minutes otherwise
    free = (i for i in range(vocab_size) if i not in taken)
    for word in WORDS:
        if word not in vocab:
            nxt = next(free, None)
            if nxt is None:
                break
            vocab[word] = nxt
    for i in free:  # no holes in the vocabulary
        vocab[f"<unused{i}>"] = i
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")
    tok = (cls or PreTrainedTokenizerFast)(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left", extra_special_tokens=named or {},
    )  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


def _byte_level_tokenizer(specials: list[str]):
    """A byte-level BPE trained on WORDS (about 550 tokens, each word one token): for model types whose
    tokenizer class transformers rebuilds from the vocabulary and merges (Qwen3.5). ``specials`` get the ids
    after <pad>, <s>, </s>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<s>", "</s>", "<unk>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    core.train_from_iterator([" ".join(WORDS)] * 50 + [w for w in WORDS for _ in range(20)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")  # fmt: skip


def _template(image: str) -> str:
    """A plain chat template whose image part renders as ``image``."""
    return (
        "{% for message in messages %}{{ message['role'] | upper }}: "
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image + "{% elif part['type'] == "
        "'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


def _finish(model, processor, out: Path, lam: float | None, eos: int) -> Path:
    if lam is not None:
        model.config.global_context_broadcast_lambda = lam
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = 0
    # a random model would sometimes generate an image placeholder; trained ones do not
    specials = set(processor.tokenizer.all_special_ids) - {eos, 0}
    model.generation_config.suppress_tokens = sorted(specials)
    out = Path(out)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def processed_families_here() -> list[str]:
    """The families that have a tiny checkpoint with a processor and whose tests run on this transformers;
    on the older releases (processors' arguments differ there) the seed families, whose builders cover them."""
    from family_cases import CASES
    from vlm_cases import families_here, version_label

    here = [t for t in families_here() if CASES[t].processor is not None]
    return here if version_label() == "newest" else [t for t in here if CASES[t].seed]


def save_tiny(
    model_type: str, out: Path, lam: float | None = None, seed: int = 0, config: dict | None = None, saver=None
) -> Path:
    """A tiny random ``model_type`` checkpoint (tiny_configs.json, or ``config``) with its processor (its row's
    ``processor``, or ``saver``, a builder of the same kind), saved to ``out``."""
    import torch
    import transformers as tf
    from family_cases import CASES

    d = CONFIGS[model_type] if config is None else config
    saver = saver or CASES[model_type].processor
    if saver is None:
        raise ValueError(model_type)
    torch.manual_seed(seed)
    processor, model, eos = saver(d, tf)
    return _finish(model, processor, out, lam, eos)


# ----- the processors of the tiny checkpoints: each ``(config dict, transformers) -> (processor, model, eos id)``


def _from_config(builder):
    """A builder ``(d, tf, ...) -> (processor, model class)`` as a row's processor: the model built from ``d``,
    eos id 2."""

    @functools.wraps(builder)
    def save(d, tf, *args, **kwargs):
        processor, model_cls = builder(d, tf, *args, **kwargs)
        return processor, model_cls(model_cls.config_class(**d)), 2

    return save


def llava_processor(d, tf, next_: bool = False):
    """LLaVA (``next_``: LLaVA-NeXT, with its grid pinpoints)."""
    tok = _tokenizer({"<image>": 100}, d["text_config"]["vocab_size"])
    tok.image_token = "<image>"
    common = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}
    if not next_:
        image_processor = tf.CLIPImageProcessor(**common)
        processor_cls, model_cls, config_cls = tf.LlavaProcessor, tf.LlavaForConditionalGeneration, tf.LlavaConfig
    else:
        image_processor = tf.LlavaNextImageProcessor(**common, image_grid_pinpoints=d["image_grid_pinpoints"])
        processor_cls, model_cls = tf.LlavaNextProcessor, tf.LlavaNextForConditionalGeneration
        config_cls = tf.LlavaNextConfig
    processor = processor_cls(
        image_processor=image_processor, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_template("<image>\n"),
    )  # fmt: skip
    return processor, model_cls(config_cls(**d)), 2


def qwen_processor(processor_name: str, model_name: str, byte_level: bool = False):
    """Qwen-style families: ``processor_name`` and ``model_name`` of transformers, the shared tokenizer and
    template; ``byte_level``: a byte-level BPE (transformers rebuilds Qwen3.5's from the vocabulary and merges)."""

    def save(d, tf):
        specials = {"<|image_pad|>": 120, "<|video_pad|>": 121, "<|vision_start|>": 122, "<|vision_end|>": 123,
                    "<|im_start|>": 124, "<|im_end|>": 125}  # fmt: skip
        qwen_cls = tf.Qwen2TokenizerFast if compat.qwen_processors_need_qwen2_tokenizer() else None
        if byte_level:
            tok = _byte_level_tokenizer(list(specials))
            specials = {name: tok.convert_tokens_to_ids(name) for name in specials}
            ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
            d = {**d, **dict(zip(ids, specials.values(), strict=False)),
                 "text_config": {**d["text_config"], "vocab_size": 640}}  # fmt: skip
        else:
            tok = _tokenizer(specials, d["text_config"]["vocab_size"], cls=qwen_cls)
        if processor_name != "Qwen3VLProcessor":  # 14 px patches
            pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 9}
            video_cls = tf.Qwen2VLVideoProcessor
        else:  # 16 px patches
            pixels = {"patch_size": 16, "min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 9}
            video_cls = tf.Qwen3VLVideoProcessor
        processor_cls, model_cls = getattr(tf, processor_name), getattr(tf, model_name)
        config_cls = model_cls.config_class
        processor = processor_cls(
            image_processor=tf.Qwen2VLImageProcessor(**pixels), tokenizer=tok, video_processor=video_cls(**pixels),
            chat_template=QWEN_TEMPLATE,
        )  # fmt: skip
        config = config_cls(**d)
        config.text_config.eos_token_id = specials["<|im_end|>"]
        return processor, model_cls(config), specials["<|im_end|>"]

    return save


def internvl_processor(d, tf):
    specials = {"<IMG_CONTEXT>": 120, "<img>": 121, "</img>": 122, "<image>": 123, "<video>": 124}
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}  # fmt: skip
    tok = _tokenizer(specials, d["text_config"]["vocab_size"], named)
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size={"height": 56, "width": 56}, crop_to_patches=True,
                                                 min_patches=1, max_patches=3),
        tokenizer=tok, video_processor=tf.InternVLVideoProcessor(size={"height": 56, "width": 56}),
        image_seq_length=4, chat_template=_template("<IMG_CONTEXT>\n"),
    )  # fmt: skip
    return processor, tf.InternVLForConditionalGeneration(tf.InternVLConfig(**d)), 2


def gemma3n_processor(d, tf):
    specials = {"<image_soft_token>": 129, "<start_of_image>": 126, "<end_of_image>": 128,
                "<audio_soft_token>": 145, "<start_of_audio>": 127, "<end_of_audio>": 144}  # fmt: skip
    named = {
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
        "audio_token": "<audio_soft_token>", "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>",
    }  # fmt: skip
    tok = _tokenizer(specials, d["text_config"]["vocab_size_per_layer_input"], named)
    processor = tf.Gemma3nProcessor(
        feature_extractor=tf.Gemma3nAudioFeatureExtractor(), tokenizer=tok,
        image_processor=tf.SiglipImageProcessor(size={"height": 64, "width": 64}),
        chat_template=_template("<image_soft_token>"), image_seq_length=4, audio_seq_length=2,
    )  # fmt: skip
    return processor, tf.Gemma3nForConditionalGeneration(tf.Gemma3nConfig(**d)), 1


@_from_config
def gemma3_processor(d, tf):
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = _tokenizer({"<image_soft_token>": 120, "<start_of_image>": 122, "<end_of_image>": 123}, 128, named)
    return tf.Gemma3Processor(
        image_processor=tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
        image_seq_length=d["mm_tokens_per_image"], chat_template=_template("<start_of_image>"),
    ), tf.Gemma3ForConditionalGeneration  # fmt: skip


@_from_config
def paligemma_processor(d, tf):
    tok = _tokenizer({"<image>": 120}, 128, {"image_token": "<image>"})
    image_processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16)
    # PaliGemma's processor puts the image tokens before the prompt itself
    return tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=_template("")), \
        tf.PaliGemmaForConditionalGeneration  # fmt: skip


@_from_config
def llava_onevision_processor(d, tf):
    tok = _tokenizer({"<image>": 120, "<video>": 121}, 128, {"image_token": "<image>", "video_token": "<video>"})
    size = {"height": 28, "width": 28}
    return tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=d["image_grid_pinpoints"]),
        tokenizer=tok, video_processor=tf.LlavaOnevisionVideoProcessor(size=size), num_image_tokens=4,
        vision_feature_select_strategy="full", chat_template=_template("<image>\n"),
    ), tf.LlavaOnevisionForConditionalGeneration  # fmt: skip


@_from_config
def mistral3_processor(d, tf):
    tok = _tokenizer({"[IMG]": 120, "[IMG_BREAK]": 121, "[IMG_END]": 122}, 128)
    return tf.PixtralProcessor(
        image_processor=tf.PixtralImageProcessor(size={"longest_edge": 64}, patch_size=8), tokenizer=tok,
        patch_size=8, spatial_merge_size=2, chat_template=_template("[IMG]"),
    ), tf.Mistral3ForConditionalGeneration  # fmt: skip


@_from_config
def idefics3_processor(d, tf, smolvlm: bool = False):
    """Images split into crops of 32 px (up to 2 x 2 for a 64 px image) plus the global view, 4 tokens each."""
    specials = {"<image>": 120, "<fake_token_around_image>": 110, "<global-img>": 111, "<end_of_utterance>": 113}
    specials |= {f"<row_{r}_col_{c}>": 80 + 3 * r + c for r in (1, 2, 3) for c in (1, 2, 3)}
    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>"}  # fmt: skip
    tok = _tokenizer(specials, 128, named)
    sizes = {"size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 32}}
    if smolvlm:  # SmolVLM's processor needs num2words
        return tf.SmolVLMProcessor(
            image_processor=tf.SmolVLMImageProcessor(**sizes), tokenizer=tok,
            video_processor=tf.SmolVLMVideoProcessor(), image_seq_len=4, chat_template=_template("<image>"),
        ), tf.SmolVLMForConditionalGeneration  # fmt: skip
    return tf.Idefics3Processor(image_processor=tf.Idefics3ImageProcessor(**sizes), tokenizer=tok, image_seq_len=4,
                                chat_template=_template("<image>")), tf.Idefics3ForConditionalGeneration  # fmt: skip


@_from_config
def glm_processor(d, tf, processor_name: str, model_name: str):
    """GLM-4.1V and GLM-4.6V: ``processor_name`` and ``model_name`` of transformers."""
    specials = {"<|image|>": 120, "<|video|>": 121, "<|begin_of_image|>": 122, "<|end_of_image|>": 123,
                "<|begin_of_video|>": 124, "<|end_of_video|>": 125}  # fmt: skip
    tok = _tokenizer(specials, 128, {"image_token": "<|image|>", "video_token": "<|video|>"})
    pixels = {"size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 9}, "patch_size": 14}
    processor_cls, model_cls = getattr(tf, processor_name), getattr(tf, model_name)
    return processor_cls(
        image_processor=tf.Glm4vImageProcessor(**pixels), tokenizer=tok,
        video_processor=tf.Glm4vVideoProcessor(**pixels),
        chat_template=_template("<|begin_of_image|><|image|><|end_of_image|>"),
    ), model_cls  # fmt: skip


@_from_config
def gemma4_processor(d, tf):
    """Gemma 4's processor with 8 px patches pooled 2 x 2, at its smallest budget (70 soft tokens)."""
    specials = {"<|image|>": 120, "<|video|>": 121, "<|boi|>": 122, "<|eoi|>": 123, "<|boa|>": 124, "<|eoa|>": 125,
                "<|audio|>": 126}  # fmt: skip
    named = {"image_token": "<|image|>", "boi_token": "<|boi|>", "eoi_token": "<|eoi|>", "audio_token": "<|audio|>",
             "boa_token": "<|boa|>", "eoa_token": "<|eoa|>"}  # fmt: skip
    image_processor = tf.Gemma4ImageProcessor(patch_size=8, max_soft_tokens=70, pooling_kernel_size=2)
    return tf.Gemma4Processor(
        feature_extractor=tf.Gemma4AudioFeatureExtractor(), image_processor=image_processor,
        tokenizer=_tokenizer(specials, 128, named), video_processor=tf.Gemma4VideoProcessor(), image_seq_length=70,
        chat_template=_template("<|image|>"),
    ), tf.Gemma4ForConditionalGeneration  # fmt: skip


@_from_config
def kimi_k25_processor(d, tf):
    specials = {"<|media_pad|>": 120, "<|kimi_k25_video_placeholder|>": 121, "<|media_begin|>": 122,
                "<|media_end|>": 123}  # fmt: skip
    tok = _tokenizer(specials, 128, {"image_token": "<|media_pad|>", "video_token": "<|kimi_k25_video_placeholder|>"})
    return tf.Kimi_K25Processor(
        image_processor=tf.Kimi_K25ImageProcessor(patch_size=14), tokenizer=tok,
        video_processor=tf.Kimi_K25VideoProcessor(patch_size=14),
        chat_template=_template("<|media_begin|><|media_pad|><|media_end|>"),
    ), tf.Kimi_K25ForConditionalGeneration  # fmt: skip


@_from_config
def aya_vision_processor(d, tf):
    """Tiles of 32 px (up to 4, then the global view), 4 tokens each, as Aya Vision's processor writes them."""
    specials = {"<|IMG_PATCH|>": 120, "<|START_OF_IMG|>": 122, "<|END_OF_IMG|>": 123, "<|IMG_LINE_BREAK|>": 124,
                "<image>": 125}  # fmt: skip
    image_processor = tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True,
                                               min_patches=1, max_patches=4)  # fmt: skip
    return tf.AyaVisionProcessor(
        image_processor=image_processor, tokenizer=_tokenizer(specials, 128, {"image_token": "<image>"}),
        patch_size=8, img_size=32, downsample_factor=2, chat_template=_template("<image>"),
    ), tf.AyaVisionForConditionalGeneration  # fmt: skip


@_from_config
def llava_next_video_processor(d, tf):
    tok = _tokenizer({"<image>": 120, "<video>": 121}, 128, {"image_token": "<image>", "video_token": "<video>"})
    common = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}
    return tf.LlavaNextVideoProcessor(
        video_processor=tf.LlavaNextVideoVideoProcessor(**common), tokenizer=tok,
        image_processor=tf.LlavaNextImageProcessor(**common, image_grid_pinpoints=d["image_grid_pinpoints"]),
        patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=_template("<image>\n"),
    ), tf.LlavaNextVideoForConditionalGeneration  # fmt: skip


def llama4_processor_only(tf, patch_size: int = 8):
    """Llama4Processor with a tiny tokenizer: 32 px tiles (up to 4 crops, then the global view), ``patch_size`` px
    patches, pixel shuffle 2 x 2 (4 tokens a tile at 8 px)."""
    specials = {"<|patch|>": 120, "<|image_start|>": 121, "<|image_end|>": 122, "<|image|>": 123,
                "<|tile_x_separator|>": 124, "<|tile_y_separator|>": 125}  # fmt: skip
    tokenizer = _tokenizer(specials, 128, {"image_token": "<|image|>"})
    image_processor = getattr(tf, "Llama4ImageProcessor", None) or tf.Llama4ImageProcessorFast
    return tf.Llama4Processor(
        image_processor=image_processor(size={"height": 32, "width": 32}, max_patches=4), tokenizer=tokenizer,
        patch_size=patch_size, chat_template=_template("<|image|>"),
    )  # fmt: skip


@_from_config
def llama4_processor(d, tf):
    """Llama 4's checkpoint for vLLM only (tests/vllm_cases.py): its family row has no processor (see its
    ``no_processor``), so the probes and lmms-eval tests do not use it."""
    return llama4_processor_only(tf, d["vision_config"]["patch_size"]), tf.Llama4ForConditionalGeneration


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def _tiny_qformer_parts():
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    qformer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
               "encoder_hidden_size": 32, "vocab_size": 128, "max_position_embeddings": 64}  # fmt: skip
    text = {"model_type": "opt", "vocab_size": 128, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "word_embed_proj_dim": 32, "max_position_embeddings": 64}  # fmt: skip
    return vision, qformer, text


def save_qformer_model(kind: str, out: Path, seed: int = 0) -> Path:
    """A tiny random BLIP-2 stage-1 retrieval model (``blip2``) or InstructBLIP (``instructblip``) with a
    processor: 32 px images, 4 queries, a 3-layer Q-Former of width 32."""
    import torch
    import transformers as tf

    vision, qformer, text = _tiny_qformer_parts()
    torch.manual_seed(seed)
    tok = _tokenizer({"[CLS]": 101, "[SEP]": 102, "[DEC]": 103}, 128)
    image_processor = tf.BlipImageProcessor(size={"height": 32, "width": 32})
    if kind == "blip2":  # the stage-1 retrieval model feeds text to the Q-Former, as blip2-itm-vit-g does
        qformer = {**qformer, "use_qformer_text_input": True}
        config = tf.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                                image_text_hidden_size=16)  # fmt: skip
        model = tf.Blip2ForImageTextRetrieval(config)
        processor = tf.Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=4)
    else:
        config = tf.InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                                       num_query_tokens=4)  # fmt: skip
        model = tf.InstructBlipForConditionalGeneration(config)
        processor = tf.InstructBlipProcessor(image_processor=image_processor, tokenizer=tok, qformer_tokenizer=tok,
                                             num_query_tokens=4)  # fmt: skip
    out = Path(out)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_vision_language_encoder(kind: str, out: Path, seed: int = 0) -> Path:
    """A tiny random CLIP, SigLIP or SigLIP2 (4 vision layers, 32 px images of 8 px patches: a 4 x 4
    grid; SigLIP2 up to 16 patches at the image's aspect ratio) with a processor."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    tok = _tokenizer({}, 128)
    tok.model_max_length = 16
    text = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision,
                                           projection_dim=16))  # fmt: skip
        image_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = tf.CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    elif kind == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        processor = tf.SiglipProcessor(image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32}),
                                       tokenizer=tok)  # fmt: skip
    else:
        vision2 = {k: v for k, v in vision.items() if k != "image_size"} | {"num_patches": 16}
        model = tf.Siglip2Model(tf.Siglip2Config(text_config=text, vision_config=vision2))
        processor = tf.Siglip2Processor(image_processor=tf.Siglip2ImageProcessor(patch_size=8, max_num_patches=16),
                                        tokenizer=tok)  # fmt: skip
    out = Path(out)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_mask2former(out: Path, seed: int = 0) -> Path:
    """A tiny random Mask2Former (Swin backbone of width 32, 5 queries) with its image processor (64 px)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    swin = tf.SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                         window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    config = tf.Mask2FormerConfig(backbone_config=swin, hidden_dim=32, mask_feature_size=32, feature_size=32,
                                  num_queries=5, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                                  dim_feedforward=32, encoder_feedforward_dim=32, num_labels=3, common_stride=4,
                                  use_timm_backbone=False)  # fmt: skip
    out = Path(out)
    tf.Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(out)
    tf.Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}, size_divisor=32).save_pretrained(out)
    return out


def save_sam(out: Path, seed: int = 0) -> Path:
    """A tiny random SAM (64 px, a 2-layer ViT of width 32) with its processor."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    vision = tf.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=16, mlp_dim=64, global_attn_indexes=[1], window_size=2,
                                num_pos_feats=8)  # fmt: skip
    prompt = tf.SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = tf.SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32,
                                      iou_head_hidden_dim=16)  # fmt: skip
    out = Path(out)
    tf.SamModel(tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).eval(
    ).save_pretrained(out)  # fmt: skip
    image_processor = tf.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    tf.SamProcessor(image_processor=image_processor).save_pretrained(out)
    return out
