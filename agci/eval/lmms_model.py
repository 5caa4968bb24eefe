"""lmms-eval models with AGCI on, one class for every supported family.

Every family goes through its own processor and chat template, so one implementation serves them
all; the registered names (``agci_qwen2_5_vl``, ``agci_llava``, ...) only pin which model types a
name accepts, so a wrong checkpoint is refused before anything loads; ``agci`` accepts them all.
Batches are left padded and AGCI is per image, so a sample's answer does not depend on what it is
batched with.

    lmms-eval --model agci_qwen2_5_vl \\
        --model_args pretrained=PATH,global_context_broadcast_lambda=0.5 --tasks pope
"""

from __future__ import annotations

import inspect
import itertools
import logging

import torch
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..images import to_rgb
from ..vlm import chat_messages, processor_inputs
from .plugin import MODEL_NAMES, class_name, model_name_for

log = logging.getLogger(__name__)


def check_model_args(model_name: str, pretrained: str, args: dict):
    """Refuse model_args that ``model_name`` cannot run (ValueError naming the key and the fix), before any
    weight loads; returns the checkpoint's config and the lambda given (None: the checkpoint's own).

    ``agci eval`` calls it before starting lmms-eval, which exits 0 even when it refuses a model."""
    from ..configs import LAMBDA_KEY, MAX_LAMBDA, parse_lambda
    from ..vlm import load_config

    unknown = sorted(set(args) - set(_ACCEPTED))
    if unknown:
        raise ValueError(f"{model_name}: unknown model_args {unknown}; accepted: {', '.join(_ACCEPTED)}")
    batch_size = args.get("batch_size", 1)
    if not str(batch_size).isdigit() or int(batch_size) < 1:
        raise ValueError(f"{model_name}: batch_size must be a whole number >= 1, got {batch_size!r}")
    for key in ("max_pixels", "min_pixels", "max_new_tokens"):
        if args.get(key) not in (None, "") and not str(args[key]).isdigit():
            raise ValueError(f"{model_name}: {key} must be a whole number, got {args[key]!r}")
    if str(args.get("dtype", "auto")) not in DTYPES:
        raise ValueError(f"{model_name}: dtype must be one of {', '.join(DTYPES)}, got {args['dtype']!r}")
    lam = args.get(LAMBDA_KEY)
    if lam in (None, "None"):  # absent or null; "" is refused below, not read as "the checkpoint's own"
        lam = None
    else:
        try:
            lam = parse_lambda(lam)
        except (TypeError, ValueError) as exc:
            problem = f"{model_name}: {LAMBDA_KEY}={lam} is not a number from 0 to {MAX_LAMBDA:g}"
            raise ValueError(f"{problem} ({exc}); e.g. 0.5") from exc
    config = load_config(pretrained, _flag(args.get("trust_remote_code", False)))
    accepted = MODEL_NAMES[model_name]
    if config.model_type not in accepted:
        raise ValueError(
            f"{pretrained} is a {config.model_type} checkpoint; the lmms-eval model {model_name} serves "
            f"{', '.join(accepted)}: use {model_name_for(config.model_type)}"
        )
    return config, lam


DTYPES = ("auto", "bfloat16", "float16", "float32")


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class AGCIModel(lmms):
    """A supported VLM loaded through :func:`agci.vlm.load_vlm` (the probes load models the same way).

    ``model_args``: ``pretrained`` (local folder or hub id), ``global_context_broadcast_lambda``
    (overrides config.json; the checkpoint's value when absent), ``dtype`` (auto, bfloat16, float16,
    float32), ``device``, ``device_map``, ``attn_implementation``, ``batch_size``, ``max_pixels`` /
    ``min_pixels`` (Qwen processors), ``max_new_tokens`` (default when a task sets none),
    ``system_prompt``, ``trust_remote_code``, ``use_cache``."""

    is_simple = True
    model_name = "agci"

    def __init__(
        self,
        pretrained: str,
        global_context_broadcast_lambda: float | str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str = "",
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_pixels: int | str | None = None,
        min_pixels: int | str | None = None,
        max_new_tokens: int | str = 128,
        system_prompt: str | None = None,
        trust_remote_code: bool | str = False,
        use_cache: bool | str = True,
        **unknown,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        from ..configs import LAMBDA_KEY
        from ..vlm import load_vlm

        given = {k: v for k, v in locals().items() if k in _ACCEPTED and k != "pretrained"}
        config, lam = check_model_args(self.model_name, pretrained, {**given, **unknown})
        trust = _flag(trust_remote_code)

        accelerator = Accelerator()
        self.accelerator = accelerator
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        if device is None:
            device = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
        if device_map and self._world_size > 1:
            raise ValueError("device_map splits one model over devices; do not combine it with several processes")
        processor_kwargs = {k: int(v) for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v}
        self.vlm = load_vlm(
            pretrained, global_context_broadcast_lambda=lam, dtype=dtype, device=device, device_map=device_map or None,
            attn=attn_implementation, trust_remote_code=trust, processor_kwargs=processor_kwargs, config=config,
        )  # fmt: skip
        self.pretrained = pretrained
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        self.use_cache = _flag(use_cache)
        log.info(
            "%s: %s (%s) with %s=%s",
            self.model_name, pretrained, config.model_type, LAMBDA_KEY, self.model.global_context_broadcast_lambda,
        )  # fmt: skip

    @property
    def model(self):
        return self.vlm.model

    @property
    def processor(self):
        return self.vlm.processor

    @property
    def tokenizer(self):
        return self.vlm.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self.vlm.device

    @property
    def global_context_broadcast_lambda(self) -> float:
        return self.model.global_context_broadcast_lambda

    # -- inputs ---------------------------------------------------------------------------------
    def _inputs(self, images: list[list], texts: list[str], continuations: list[str] | None = None) -> dict:
        prompts = [
            self.processor.apply_chat_template(
                chat_messages(t, n_images=len(imgs), system_prompt=self.system_prompt), add_generation_prompt=True
            )
            for imgs, t in zip(images, texts, strict=True)
        ]
        if continuations is not None:
            prompts = [p + c for p, c in zip(prompts, continuations, strict=True)]
        return processor_inputs(self.vlm, prompts, images)

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        visuals = [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]
        for v in visuals:
            if not hasattr(v, "convert"):
                raise NotImplementedError(
                    f"{self.model_name}: task {task} gives a {type(v).__name__} visual (video or audio); "
                    "agci's lmms-eval models take images only"
                )
        return [to_rgb(v) for v in visuals]

    # -- lmms-eval API ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        def by_length(args):
            return -len(args[0]), args[0]

        order = utils.Collator([r.args for r in requests], by_length, grouping=True)
        answers = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_name} answering")
        for chunk in order.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk, strict=True)
            gen_kwargs = all_gen_kwargs[0]  # the collator groups equal kwargs together
            visuals = [
                self._visuals(f, t, s, i) for f, t, s, i in zip(doc_to_visual, tasks, splits, doc_ids, strict=True)
            ]
            texts = self._generate(list(contexts), visuals, dict(gen_kwargs))  # _generate pops from its copy
            for context, text in zip(contexts, texts, strict=True):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            answers.extend(texts)
            bar.update(len(chunk))
        bar.close()
        return order.get_original(answers)

    def _generate(self, contexts: list[str], visuals: list[list], gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.pop("temperature", 0) or 0)
        sample = bool(gen_kwargs.pop("do_sample", False)) or temperature > 0
        options = {
            "max_new_tokens": int(gen_kwargs.pop("max_new_tokens", self.default_max_new_tokens)),
            "num_beams": int(gen_kwargs.pop("num_beams", 1) or 1),
            "do_sample": sample,
            "use_cache": self.use_cache,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sample:
            options["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                options["top_p"] = float(gen_kwargs["top_p"])
        else:  # greedy: leave no sampling settings behind to warn about
            options.update(temperature=None, top_p=None, top_k=None)
        out: list[str | None] = [None] * len(contexts)
        # samples with the same number of images share a processor call (mixed counts confuse some processors)
        indices = sorted(range(len(contexts)), key=lambda i: len(visuals[i]))
        for _, group in itertools.groupby(indices, key=lambda i: len(visuals[i])):
            group = list(group)
            inputs = self._inputs([visuals[i] for i in group], [contexts[i] for i in group])
            generated = self.model.generate(**inputs, **options)[:, inputs["input_ids"].shape[1] :]
            for i, text in zip(group, self.tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text.strip()
        return out

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after the chat-templated context, and whether greedy
        decoding would produce it."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_name} scoring"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(
                self.task_dict[task][split][doc_id]
            )  # fmt: skip
            images = [self._visuals(doc_to_visual, task, split, doc_id)]
            prompt_len = self._inputs(images, [context])["input_ids"].shape[1]
            inputs = self._inputs(images, [context], [continuation])
            logits = self.model(**inputs).logits[0, prompt_len - 1 : -1].float()
            target = inputs["input_ids"][0, prompt_len:]
            logp = logits.log_softmax(-1).gather(1, target[:, None]).sum().item()
            results.append((logp, bool((logits.argmax(-1) == target).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{self.model_name}: multi-round tasks are not supported")


_ACCEPTED = tuple(p for p in inspect.signature(AGCIModel.__init__).parameters if p not in ("self", "unknown"))


def _named(model_name: str) -> type[AGCIModel]:
    name = class_name(model_name)
    return type(name, (AGCIModel,), {"model_name": model_name, "__module__": __name__, "__qualname__": name})


# one class per registered name (lmms-eval's manifests point at them by name)
for _name in MODEL_NAMES:
    globals()[class_name(_name)] = _named(_name)
AGCI = globals()["AGCI"]
