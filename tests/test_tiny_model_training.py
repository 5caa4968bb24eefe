"""The embedded model's training script runs (a few steps, tiny pool), with and without the alignment loss."""

import json

import pytest

from agci.bias.tiny_model import train


@pytest.mark.parametrize("align", [0.0, 1.0])
def test_training_script_runs_and_saves_a_loadable_checkpoint(tmp_path, align):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    record = train(tmp_path, steps=3, batch_size=4, lr=1e-3, seed=0, pool=12, agci_lambda=0.5,
                   align_weight=align, lone_yes_no=bool(align))  # fmt: skip
    assert record["steps_done"] == 3 and record["align_weight"] == align
    assert set(record["held_out_accuracy_by_cell"]) == {"lambda_0", "lambda_0.5"}
    assert json.loads((tmp_path / "training.json").read_text())["lone_yes_no"] == bool(align)
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert (
        AutoProcessor.from_pretrained(tmp_path).tokenizer.convert_tokens_to_ids("Yes")
        < model.config.text_config.vocab_size
    )
