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
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..configs import LAMBDA_KEY, validate_lambda
from ..fingerprints import file_digest
from .shipped import ADAPTER_RECORD

BASE = "base"
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
    record = folder / ADAPTER_RECORD
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"it holds a {type(data).__name__}, not an object with {LAMBDA_KEY}")
        value = data.get(LAMBDA_KEY)
        return None if value is None else validate_lambda(value)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{record}: {exc}; fix or delete the file") from exc


def _adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ValueError(f"--adapter {folder}: {path} cannot be read as JSON ({exc}); save the adapter again") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--adapter {folder}: {path} holds a {type(data).__name__}, not PEFT's settings")
    return data


def _model_type_at(name: str | None) -> str | None:
    """The model type of a local checkpoint folder (its config.json), None when it cannot be known offline."""
    if not name or not (Path(name) / "config.json").is_file():
        return None
    try:
        found = json.loads((Path(name) / "config.json").read_text()).get("model_type")
    except (ValueError, OSError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def check_bases(models: list[ProbedModel], model: str, model_type: str) -> None:
    """Refuse an adapter trained on another base than ``model`` (of type ``model_type``), before anything
    is loaded: its adapter_config.json names the base (``base_model_name_or_path``); where that base is a
    local checkpoint, its model type must be the same. (A base that is a hub id cannot be read offline: a
    mismatch is then caught when the adapter's weights do not fit, see :class:`AdapterSwitch`.)"""
    for m in models:
        if m.adapter is None:
            continue
        base = _adapter_config(m.adapter).get("base_model_name_or_path")
        base_type = _model_type_at(base)
        if base_type is not None and base_type != model_type:
            raise ValueError(
                f"--adapter {m.adapter} was trained on {base} ({base_type}), not on --model {model} ({model_type}); "
                "give the adapter's base model as --model, or adapters trained on this one"
            )


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
            *(
                m.adapter / f
                for f in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", ADAPTER_RECORD)
            )
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

        def wrap():
            return PeftModel.from_pretrained(model, str(first.adapter), adapter_name=self.names[first.label])

        with warnings.catch_warnings(record=True) as caught:  # PEFT says "missing adapter keys" only in a warning
            warnings.simplefilter("always")
            self.peft = self._load(first, wrap)
        missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
        for w in caught:
            if str(w.message) not in missing:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._check_fit(first, missing, [])
        for m in rest:
            result = self._load(m, lambda m=m: self.peft.load_adapter(str(m.adapter), adapter_name=self.names[m.label]))
            self._check_fit(m, result.missing_keys, result.unexpected_keys)
        self.peft.eval()

    def _load(self, m: ProbedModel, load):
        try:
            return load()
        except (ValueError, KeyError, RuntimeError) as exc:  # PEFT: target modules absent, shapes that differ
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"--adapter {m.adapter} does not fit the model ({first}); {self._fix}") from exc

    _fix = "give adapters trained on --model (their adapter_config.json names the base)"

    def _check_fit(self, m: ProbedModel, missing, unexpected) -> None:
        """Refuse an adapter whose saved weights do not all land in the model (trained on another base)."""
        if missing or unexpected:
            what = "; ".join(f"{kind}: {str(keys[0])[:160]}" for kind, keys in (("missing", missing),
                             ("unexpected", unexpected)) if keys)  # fmt: skip
            raise ValueError(
                f"--adapter {m.adapter} does not fit the model: its weights do not land in the model's layers "
                f"({what}), so it was trained on another base; {self._fix}"
            )

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
