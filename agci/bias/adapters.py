"""PEFT adapters in a probe run: ``agci probe --adapter PATH[,PATH]`` probes the base model and each adapter.

Every model of a run is probed on the same batches: a batch is read and encoded once, then scored by each
model at each of its lambdas (the adapters are loaded once onto the base and switched, the base is the
adapters turned off). Adapters whose folder names differ only in a trailing ``-seed<N>`` are seeds of one
setting: the summary averages them and compares two such settings seed by seed.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..configs import validate_lambda
from ..runs import file_digest

BASE = "base"
RECORD = "agci-adapter.json"  # written next to an adapter by agci.bias.tiny_lora: the lambda it was trained with
_SEED = re.compile(r"^(?P<setting>.+)-seed(?P<seed>\d+)$")


def split_seed(label: str) -> tuple[str, int | None]:
    """(setting, seed) of a model label: ``lora-seed2`` -> ("lora", 2); without a ``-seed<N>``: (label, None)."""
    match = _SEED.match(label)
    return (match["setting"], int(match["seed"])) if match else (label, None)


@dataclass(frozen=True)
class ProbedModel:
    """One model of a probe run: the base (``adapter`` None) or the base with one adapter."""

    label: str
    adapter: Path | None
    trained_lambda: float | None  # from the adapter's agci-adapter.json; None when it has none

    @property
    def setting(self) -> str:
        """The label without a trailing ``-seed<N>``: what the seeds of one setting share."""
        return split_seed(self.label)[0]

    @property
    def seed(self) -> int | None:
        return split_seed(self.label)[1]


def _trained_lambda(folder: Path) -> float | None:
    record = folder / RECORD
    if not record.is_file():
        return None
    try:
        value = json.loads(record.read_text()).get("global_context_broadcast_lambda")
        return None if value is None else validate_lambda(value)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{record}: {exc}; fix or delete the file") from exc


def probed_models(adapters) -> list[ProbedModel]:
    """The base and one model per adapter folder, each checked to hold a PEFT adapter (else ValueError)."""
    models = [ProbedModel(BASE, None, None)]
    for path in adapters:
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise ValueError(
                f"--adapter {path}: no adapter_config.json there; give the folder a PEFT adapter was saved to "
                "(model.save_pretrained after get_peft_model)"
            )
        label = folder.resolve().name
        if label in {m.label for m in models}:
            raise ValueError(f"--adapter: two adapters are named {label!r} (or one is named {BASE!r}); rename one")
        models.append(ProbedModel(label, folder, _trained_lambda(folder)))
    return models


def fingerprint(models: list[ProbedModel]) -> dict:
    """What identifies the adapters of a run (their label, config, weights and record)."""
    return {
        m.label: file_digest(
            *(m.adapter / f for f in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", RECORD))
        )  # fmt: skip
        for m in models
        if m.adapter is not None
    }


class AdapterSwitch:
    """The adapters loaded onto ``model`` in place (its LoRA layers live in the model's own modules, so
    the model is called as before); :meth:`active` turns one on, or all off for the base."""

    def __init__(self, model, models: list[ProbedModel]):
        self.peft = None
        adapters = [m for m in models if m.adapter is not None]
        if not adapters:
            return
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ValueError("--adapter needs PEFT: pip install peft (or agci[probe])") from exc
        # PEFT names become module names, which may not hold "." (as a lambda of 0.5 in a folder name does)
        self.names = {m.label: f"agci_adapter_{i}" for i, m in enumerate(adapters)}
        first, *rest = adapters
        self.peft = PeftModel.from_pretrained(model, str(first.adapter), adapter_name=self.names[first.label])
        for m in rest:
            self.peft.load_adapter(str(m.adapter), adapter_name=self.names[m.label])
        self.peft.eval()

    @contextlib.contextmanager
    def active(self, label: str):
        if self.peft is None:
            yield
        elif label == BASE:
            with self.peft.disable_adapter():
                yield
        else:
            self.peft.set_adapter(self.names[label])
            yield
