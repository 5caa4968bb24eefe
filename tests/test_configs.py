"""The config keys and lambda helpers (no model needed): parsing, exact text, and setting lambda for a while."""

import random
import types

import pytest

import agci
from agci.configs import LAMBDA_KEY, SCOPE_KEY, format_lambda, parse_lambdas, read_scope, using_lambda


def test_parse_lambdas_checks_every_value_and_names_the_bad_one():
    assert parse_lambdas("0, 0.5,1,") == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="'abc' is not a number"):
        parse_lambdas("0,abc")
    with pytest.raises(ValueError, match=">= 0"):
        parse_lambdas("0,-1")
    with pytest.raises(ValueError, match="finite"):
        parse_lambdas("nan")


def test_format_lambda_is_exact_and_short():
    assert format_lambda(0.0) == "0" and format_lambda(1.0) == "1" and format_lambda(0.5) == "0.5"
    assert format_lambda(0.1234567) == "0.1234567"  # {:g} gives 0.123457, another lambda
    assert format_lambda(1e-7) == "1e-07"
    rng = random.Random(0)
    for value in [rng.random() * 10 ** rng.randint(-8, 3) for _ in range(2000)]:
        assert float(format_lambda(value)) == value


def _config(**values):
    return types.SimpleNamespace(**values)


def test_using_lambda_restores_the_previous_value_also_after_an_exception():
    config = _config(**{LAMBDA_KEY: 0.25})
    model = types.SimpleNamespace(config=config)
    with using_lambda(model, 1) as value:
        assert value == 1.0 and getattr(config, LAMBDA_KEY) == 1.0
    assert getattr(config, LAMBDA_KEY) == 0.25
    with pytest.raises(RuntimeError, match="boom"), agci.using_lambda(model, 0.5):
        assert getattr(config, LAMBDA_KEY) == 0.5
        raise RuntimeError("boom")
    assert getattr(config, LAMBDA_KEY) == 0.25


def test_using_lambda_removes_a_key_that_was_absent_and_refuses_bad_values_before_changing_anything():
    config = _config()
    with using_lambda(config, 0.5):  # a config works as well as a model
        assert getattr(config, LAMBDA_KEY) == 0.5
    assert not hasattr(config, LAMBDA_KEY)
    config = _config(**{LAMBDA_KEY: 0.25})
    with pytest.raises(ValueError, match=">= 0"), using_lambda(config, -1):
        pass
    assert getattr(config, LAMBDA_KEY) == 0.25


def test_read_scope_knows_image_and_reference_and_names_the_rename_of_batch():
    assert read_scope(_config()) == "image" and read_scope(_config(**{SCOPE_KEY: None})) == "image"
    assert read_scope(_config(**{SCOPE_KEY: "reference"})) == "reference"
    with pytest.raises(ValueError, match='"batch" was renamed "reference"') as error:
        read_scope(_config(**{SCOPE_KEY: "batch"}))
    assert "\n" not in str(error.value) and 'set it to "reference" or "image"' in str(error.value)
    with pytest.raises(ValueError, match=r"global_context_broadcast_scope must be one of \('image', 'reference'\)"):
        read_scope(_config(**{SCOPE_KEY: "video"}))
