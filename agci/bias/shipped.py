"""What ships inside the package for the probe: the embedded tiny VLM and the LoRA adapters fine-tuned from it,
where they lie and what the runtime loads. How they were made is on the training floor
(:mod:`agci.bias.training`), which nothing here imports."""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets" / "tiny-probe-llava"
ADAPTER_DIR = ASSET_DIR.parent / "tiny-probe-llava-lora"
# written next to an adapter by agci.bias.training.lora: the lambda it was trained with (read by `agci probe`)
ADAPTER_RECORD = "agci-adapter.json"


def embedded_model() -> Path:
    """The embedded probe model's folder (a transformers checkpoint)."""
    if not (ASSET_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded probe model is missing from {ASSET_DIR}; reinstall agci or train it with "
            "`python -m agci.bias.training.embedded`"
        )
    return ASSET_DIR


def shipped_adapters() -> list[Path]:
    """The LoRA adapters trained from the embedded model (agci.bias.training.lora), in name order."""
    return sorted(p for p in ADAPTER_DIR.glob("*") if (p / "adapter_config.json").is_file())
