"""Tiny checkpoints that vLLM's CPU build serves, and the prompts the vLLM tests send, per family.

vLLM's CPU attention refuses heads smaller than 64, so the language models here have 2 query heads of 64 (hidden
128) and one KV head; the vision towers have 2 heads of 32 (tensor parallelism splits heads over 2 ranks).
Checkpoints are written in the key layout hub checkpoints use, which vLLM's loaders expect (transformers 5.x saves
some towers under other names and reads both).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hub_layouts
from tiny_checkpoints import llama4_processor, save_tiny
from vlm_cases import CONFIGS

# a small KV cache (vLLM's CPU build reserves 92% of the memory by default, and the tests start several engines);
# LLM.apply_model sends the tests' functions to the workers by pickling them
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

TEXT = {"hidden_size": 128, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 64, "max_position_embeddings": 1024}  # fmt: skip


QWEN = "<|im_start|>user\n{images}{words}<|im_end|>\n<|im_start|>assistant\n"
PLAIN = "USER: {images}{words} ASSISTANT:"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1}
SIGLIP = {**CLIP, "vision_use_head": False}
TOWER = (("vision_tower.", "vision_tower.vision_model."),)  # transformers 5.x saves CLIP/SigLIP towers unwrapped
NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")
MROPE = {"mrope_section": [8, 12, 12]}  # head_dim 64: 32 rotary pairs
FUSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
QWEN3_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "out_hidden_size": 128}
# half-rotary heads of 64 (16 pairs), linear-attention heads of 64
QWEN3_5_TEXT = {"rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True,
                                    "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                "linear_key_head_dim": 64, "linear_value_head_dim": 64}  # fmt: skip


@dataclass(frozen=True)
class VllmCase:
    model_type: str
    image: str  # the prompt text of one image, as the family's processor expects it
    vision: dict  # config changes of the vision tower
    top: dict | None = None  # config changes at the top level
    renames: tuple[tuple[str, str], ...] = ()  # safetensors key prefixes: as transformers saves -> as the hub has
    text: dict | None = None  # config changes of the language model beyond TEXT
    template: str = QWEN  # the prompt, around {images} and {words}
    # tokens vLLM's processor looks up or inserts (Gemma 3: "\n" up to "\n\n\n\n"; PaliGemma: "\n" at the
    # end), added in place of unused ids (the tiny tokenizers split on whitespace, so would drop them)
    vocab: tuple[str, ...] = ()
    # weights transformers initialises to zeros (Gemma 3's projection: every image token would be 0), made random
    randomized: tuple[str, ...] = ()
    # transformers attends bidirectionally within an image or a prefix (as its processor's token_type_ids say)
    # where vLLM's CPU attention cannot (no mm-prefix support): the token type that makes transformers' attention
    # causal everywhere (Gemma 3: 0, text; PaliGemma: 1, suffix), to give the reference as token_type_ids
    causal_token_type: int | None = None
    max_images: int = 2  # per prompt, as vLLM's model allows
    # key suffixes of tensors whose last two dims the hub layout has the other way round (Qwen3-VL-MoE's fused
    # experts: transformers 5.x saves [E, out, in], hub checkpoints and vLLM's loader [E, in, out])
    transposed: tuple[str, ...] = ()
    # the checkpoint's processor builder (tiny_checkpoints.py), where the family's row in family_cases.py has none
    processor: Callable | None = None
    # vLLM's class sets the logits of the generation config's suppress_tokens to -inf in compute_logits (Gemma 4;
    # transformers' generate does the same, its forward does not): the reference does it too
    suppresses: bool = False
    # writes the weights (and what else differs) as hub checkpoints have them, where transformers' own save does
    # not: (checkpoint folder, seed) -> None (Kimi K2.5)
    hub: Callable | None = None
    # vLLM's modality of the image items ("vision_chunk": Kimi K2.5's images and video chunks, as dicts)
    modality: str = "image"
    # the prompt text of one video, where agci applies AGCI to the family's videos on vLLM (its videos method):
    # its checkpoint then has the videos key, and its image processor the video processor's mean and std (vLLM 0.32
    # normalises video frames with the image processor's, in the model; real checkpoints have the same for both)
    video: str | None = None
    engine: dict | None = None  # engine settings the family needs on vLLM's CPU build
    env: dict | None = None  # environment variables the same

    def items(self, imgs: list) -> list:
        """``imgs`` as vLLM's multi_modal_data takes them for this family."""
        if self.modality == "vision_chunk":
            return [{"type": "image", "image": img, "uuid": None} for img in imgs]
        return list(imgs)

    def config(self) -> dict:
        d = copy.deepcopy(CONFIGS[self.model_type])
        d["text_config"].update({**TEXT, **(self.text or {})})
        d["vision_config"].update(self.vision)
        d.update(self.top or {})
        return d

    def prompt(self, n_images: int, words: str = "what is in the image ?") -> str:
        return self.template.format(images=self.image * n_images, words=words)

    def video_prompt(self) -> str:
        return self.template.format(images=self.video, words="what is in the video ?")


CASES = {
    c.model_type: c
    for c in (
        # the tensor-parallel families: vision heads of 32, two of them (ranks split heads)
        VllmCase("llava", "<image>\n", {**CLIP, "num_attention_heads": 2}, renames=TOWER, template=PLAIN),
        VllmCase("qwen2_5_vl", "<|vision_start|><|image_pad|><|vision_end|>",
                 {"hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128},
                 text={"rope_scaling": {"type": "mrope", **MROPE}}, video=QWEN_VIDEO),
        VllmCase("qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>",
                 {"embed_dim": 64, "hidden_size": 128, "num_heads": 1},
                 text={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **MROPE}}, video=QWEN_VIDEO),
        VllmCase("qwen3_vl", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION,
                 text={"rope_scaling": {"rope_type": "default", "mrope_interleaved": True, **MROPE}}, video=QWEN_VIDEO),
        VllmCase("gemma3", "<start_of_image>", SIGLIP, template=PLAIN, vocab=NEWLINES, renames=TOWER,
                 randomized=("multi_modal_projector.mm_input_projection_weight",), causal_token_type=0),
        VllmCase("paligemma", "", {**SIGLIP, "projection_dim": 128}, top={"projection_dim": 128}, template=PLAIN,
                 renames=TOWER, vocab=NEWLINES, causal_token_type=1, max_images=1),
        VllmCase("mistral3", "[IMG]", {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
                                       "head_dim": 64}, template=PLAIN),
        VllmCase("llava_next", "<image>\n", CLIP, renames=TOWER, template=PLAIN),
        VllmCase("llava_onevision", "<image>\n", SIGLIP, renames=TOWER, template=PLAIN),
        VllmCase("idefics3", "<image>", CLIP, template=PLAIN),
        VllmCase("smolvlm", "<image>", CLIP, template=PLAIN),
        VllmCase("internvl", "<IMG_CONTEXT>\n", CLIP, template=PLAIN),
        VllmCase("glm4v", "<|begin_of_image|><|image|><|end_of_image|>",
                 {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "out_hidden_size": 128},
                 text={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                           "mrope_section": [4, 6, 6]}}, template=PLAIN,
                 video="<|begin_of_video|><|video|><|end_of_video|>"),
        VllmCase("qwen3_vl_moe", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION,
                 text={"rope_parameters": {"rope_type": "default", "mrope_interleaved": True, "rope_theta": 10000.0,
                                           **MROPE}, "moe_intermediate_size": 32, "norm_topk_prob": True},
                 transposed=FUSED_EXPERTS, video=QWEN_VIDEO),
        VllmCase("qwen3_5", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION, text=QWEN3_5_TEXT),
        # not served (registry.GDN_BF16: vLLM's CPU GDN is bf16 only); vLLM loads it in bf16, 2e-3 to 4e-3 from
        # transformers in fp32, as qwen3_5
        VllmCase("qwen3_5_moe", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION,
                 text={**QWEN3_5_TEXT, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32}),
        VllmCase("gemma4", "<|image|>", {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
                                         "num_key_value_heads": 1, "head_dim": 64, "default_output_length": 70},
                 # bidirectional within images as the large checkpoints (the small ones: None, causal everywhere)
                 text={"global_head_dim": 64, "use_bidirectional_attention": "vision"}, template=PLAIN,
                 vocab=NEWLINES, causal_token_type=0, suppresses=True,
                 randomized=("model.vision_tower.patch_embedder.position_embedding_table",)),
        # layer 0: RoPE, chunked attention (vLLM's chunks are whole KV blocks of 128), dense MLP; layer 1: NoPE, full
        # attention, MoE (2 experts, top 1, shared expert). vLLM turns NoPE's attention temperature tuning off below
        # 32k context (transformers always applies it): it only acts from position 8191 (floor_scale) on anyway
        VllmCase("llama4", "<|image|>", {}, text={"attention_chunk_size": 128, "no_rope_layers": [1, 0]},
                 template=PLAIN, processor=llama4_processor),
        # MLA with the latent of 512 + 64 that vLLM's CPU MLA kernel takes; one dense layer, one MoE layer
        # (DeepSeek-V3's sigmoid routing with its bias, noaux_tc, as transformers always routes). vLLM's CPU rotary op
        # rotates a strided key wrongly (k_pe is a slice of the latent row), so its PyTorch rotary runs instead; and
        # MLA turns prefix caching off on the CPU platform, so the same weights run as plain attention
        # (VLLM_MLA_DISABLE). Both change only the attention, after AGCI (with MLA and the PyTorch rotary: equal to
        # transformers to 3e-7)
        VllmCase("kimi_k25", "<|media_begin|><|media_pad|><|media_end|>",
                 {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2},
                 top={"projection_hidden_size": 64},
                 text={"num_key_value_heads": 2, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 64,
                       "v_head_dim": 64, "q_lora_rank": None, "moe_intermediate_size": 64, "topk_method": "noaux_tc",
                       "scoring_func": "sigmoid"},
                 hub=hub_layouts.kimi_k25, modality="vision_chunk",
                 engine={"compilation_config": {"custom_ops": ["-rotary_embedding"]}},
                 env={"VLLM_MLA_DISABLE": "1"}),
        # transformers embeds ids in the vision vocabulary range with embed_vision, vLLM with the text table: the
        # range starts after <end_of_image> (128) here, so that both embed it the same way
        VllmCase("gemma3n", "<image_soft_token>", {"vocab_offset": 129, "vocab_size": 15}, template=PLAIN,
                 vocab=NEWLINES),
    )
}  # fmt: skip


def _rewrite(path: Path, renames, randomized, transposed, seed: int) -> None:
    if not renames and not randomized and not transposed:
        return
    import torch
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(seed)
    for file in path.glob("*.safetensors"):
        tensors = load_file(file)
        renamed = {}
        for key, value in tensors.items():
            if key in randomized:
                value = torch.randn(value.shape, generator=generator).to(value.dtype)
            if key.endswith(transposed):
                value = value.transpose(-1, -2).contiguous()
            for old, new in renames:
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            renamed[key] = value
        save_file(renamed, file, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        raise NotImplementedError("tiny checkpoints are one file")


def _add_vocab(path: Path, entries) -> None:
    if not entries:
        return
    file = Path(path) / "tokenizer.json"
    tokenizer = json.loads(file.read_text())
    vocab = tokenizer["model"]["vocab"]
    unused = sorted((i, w) for w, i in vocab.items() if w.startswith("<unused"))
    for entry, (i, word) in zip(entries, unused[::-1], strict=False):
        del vocab[word]
        vocab[entry] = i
        tokenizer["added_tokens"].append({"id": i, "content": entry, "single_word": False, "lstrip": False,
                                          "rstrip": False, "normalized": False, "special": False})  # fmt: skip
    file.write_text(json.dumps(tokenizer, ensure_ascii=False))


def save_for_vllm(model_type: str, out: Path, lam: float | None = None, seed: int = 0) -> Path:
    """A tiny ``model_type`` checkpoint with its processor that vLLM's CPU build loads, lambda in config.json."""
    case = CASES[model_type]
    save_tiny(model_type, out, lam=lam, seed=seed, config=case.config(), saver=case.processor)
    if case.hub is not None:
        case.hub(Path(out), seed)
    _rewrite(Path(out), case.renames, case.randomized, case.transposed, seed)
    _add_vocab(Path(out), case.vocab)
    if case.video is not None:
        _with_videos(Path(out))
    return Path(out)


def _with_videos(path: Path) -> None:
    from agci.configs import VIDEOS_KEY

    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, VIDEOS_KEY: True}, indent=2))
    processor = json.loads((path / "processor_config.json").read_text())
    for key in ("image_mean", "image_std"):
        processor["image_processor"][key] = processor["video_processor"][key]
    (path / "processor_config.json").write_text(json.dumps(processor, indent=2))


def copy_with_lambda(src: Path, dst: Path, lam: float) -> Path:
    """A copy of checkpoint ``src`` with ``lam`` in its config.json."""
    import shutil

    from agci.configs import LAMBDA_KEY

    shutil.copytree(src, dst)
    config = json.loads((Path(dst) / "config.json").read_text())
    (Path(dst) / "config.json").write_text(json.dumps({**config, LAMBDA_KEY: lam}, indent=2))
    return Path(dst)


# vLLM's engine settings for the tests: fp32 (so that it can equal transformers to 1e-4), no graphs, short contexts
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "limit_mm_per_prompt": {"image": 2},
          "seed": 0, "max_num_seqs": 8}  # fmt: skip
TOP = 5  # logprobs compared per prompt


def images(n: int, seed: int = 0) -> list:
    """``n`` random RGB images of different sizes (noise: AGCI moves features of a flat image by almost nothing)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (56 + 28 * (i % 2), 56 + 28 * (i % 3 == 2), 3), dtype=np.uint8))
            for i in range(n)]  # fmt: skip


def request(case: VllmCase, imgs: list, uuids: list[str] | None = None) -> dict:
    """One vLLM prompt with ``imgs``; ``uuids`` name the items (vLLM reuses cached embeddings by name, by content
    hash without one)."""
    out = {"prompt": case.prompt(len(imgs)), "multi_modal_data": {case.modality: case.items(imgs)}}
    if uuids is not None:
        out["multi_modal_uuids"] = {case.modality: list(uuids)}
    return out


# the frames' rate: what transformers assumes for frames given without metadata, so that vLLM (which needs the
# metadata) computes the same temporal positions and timestamps
VIDEO_FPS = 24.0


def video_frames(seed: int = 0):
    """A video of 4 random frames (56 x 84), as a [T, H, W, 3] uint8 array."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)


def video_request(case: VllmCase, frames, uuid: str) -> dict:
    """One vLLM prompt with one video of ``frames``, its metadata as vLLM's video loader gives it."""
    n = len(frames)
    metadata = {"fps": VIDEO_FPS, "total_num_frames": n, "duration": n / VIDEO_FPS, "frames_indices": list(range(n)),
                "video_backend": "opencv", "do_sample_frames": False}  # fmt: skip
    return {"prompt": case.video_prompt(), "multi_modal_data": {"video": [(frames, metadata)]},
            "multi_modal_uuids": {"video": [uuid]}}  # fmt: skip


def video_chunk_request(case: VllmCase, frames: list) -> dict:
    """One vLLM prompt with one video chunk of ``frames`` (Kimi K2.5's vision chunks: an item of several frames)."""
    chunk = {"type": "video_chunk", "video_chunk": list(frames), "uuid": None, "prompt": case.image, "video_idx": 0}
    return {"prompt": case.prompt(1), "multi_modal_data": {case.modality: [chunk]}}


def first_logprobs(outputs) -> list[dict[int, float]]:
    """The first generated token's top logprobs of each request, {token id: logprob}."""
    return [{t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outputs]


def greedy_first(llm, requests: list[dict]) -> list[dict[int, float]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, logprobs=TOP, temperature=0)
    return first_logprobs(llm.generate(requests, params, use_tqdm=False))


@contextlib.contextmanager
def engine(path: Path, plugins: bool = True, env: dict | None = None, **kwargs):
    """A vLLM engine on ``path``; ``plugins=False``: stock vLLM (vLLM's own model class; agci's checks of the
    config still run). With one rank the engine runs in this process, which saves starting one: ``LLM.generate``
    then also hands all its requests to the scheduler before the first step, so that their images meet in one
    encoder call (in a separate engine process the first request may start alone). With several ranks the workers
    are processes that load the plugin themselves. The engine is shut down on exit, so that the next one gets the
    memory."""
    import gc
    import os

    from vllm import LLM, envs

    envs.disable_envs_cache()  # an engine run in this process caches the variables; the next one must read them
    _llvmlite_safe_for_vllm_cpu()
    in_process = kwargs.get("tensor_parallel_size", 1) == 1
    if not (plugins or in_process):
        raise ValueError("stock engines run in this process (one rank)")
    env = {**(env or {}), **({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if in_process else {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by the engine's processes as they start
    from agci.vllm.models import stock_classes

    if not plugins:  # a path of its own (see stock_classes)
        stock = Path(path).with_name(Path(path).name + "-stock")
        if not stock.exists():
            stock.symlink_to(Path(path).resolve(), target_is_directory=True)
        path = stock
    try:
        with contextlib.nullcontext() if plugins else stock_classes():
            llm = LLM(str(path), **{**ENGINE, **kwargs})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _llvmlite_safe_for_vllm_cpu() -> None:
    """vLLM 0.32's CPU worker, as it starts, reads ``vars(x).get("kernel")`` of every module attribute, and llvmlite's
    library wrapper (imported with numba, which Kimi K2.5's image preprocessing uses) answers ``__dict__`` with a
    function wrapper: the worker then fails. An engine in its own process starts before numba is imported; one in
    this process gets a plain ``__dict__`` answer."""
    try:
        from llvmlite.binding import ffi
    except ImportError:
        return
    ffi.lib._fntab.setdefault("__dict__", {})


def set_videos_off(model) -> None:
    """Run on vLLM's workers: agci's class leaves videos alone from now on, as without the videos key."""
    model.agci_videos = False


def set_lambda_zero(model) -> None:
    """Run on vLLM's workers (``llm.apply_model``): agci's class applies lambda 0 from now on."""
    model.agci_lambda = 0.0


def class_name(model) -> str:
    return type(model).__name__


def hf_first_logprobs(path: Path, case: VllmCase, batches: list[list], lam: float | None, videos=()) -> list:
    """transformers (+ agci at ``lam``; None: stock) on the same checkpoint: the full first-token log-softmax of
    each prompt, one prompt at a time (the prompts with images of ``batches``, then one with each video)."""
    import torch
    import transformers as tf

    import agci

    model = tf.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    if lam is not None:
        agci.apply_agci(model, lam)
    processor = tf.AutoProcessor.from_pretrained(path)
    out = []
    prompts = [{"text": [case.prompt(len(imgs))], "images": list(imgs)} for imgs in batches]
    prompts += [{"text": [case.video_prompt()], "videos": [list(v)], "do_sample_frames": False} for v in videos]
    with torch.no_grad():
        for prompt in prompts:
            inputs = processor(**prompt, return_tensors="pt")
            inputs = inputs.to(torch.float32)  # floating inputs only (Llama 4's processor gives bf16 pixels)
            if case.causal_token_type is not None:  # as vLLM's CPU attention: causal over image spans too
                for key in ("token_type_ids", "mm_token_type_ids"):
                    if key in inputs:
                        inputs[key] = torch.full_like(inputs["input_ids"], case.causal_token_type)
            logits = model(**inputs).logits[0, -1].double()
            if case.suppresses and model.generation_config.suppress_tokens:
                logits[model.generation_config.suppress_tokens] = float("-inf")
            out.append(torch.log_softmax(logits, -1))
    return out
