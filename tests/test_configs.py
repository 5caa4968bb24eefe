"""The config keys and lambda helpers (no model needed): what the keys accept, parsing, exact text, the bound, and
setting lambda for a while."""

import math
import random
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import agci
from agci.bias.summary import lambda_dir
from agci.cli import build_parser
from agci.configs import (
    LAMBDA_KEY,
    MAX_LAMBDA,
    SCOPE_KEY,
    SCOPES,
    VIDEOS_KEY,
    format_lambda,
    parse_lambda,
    parse_lambdas,
    read_lambda,
    read_scope,
    read_videos,
    using_lambda,
    validate_lambda,
)


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


# what the keys accept: only an absent key or null means "off"; every other non-number is refused

NON_NUMBERS = st.one_of(
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.floats(0, 1), max_size=2),
    st.dictionaries(st.text(max_size=3), st.floats(0, 1), max_size=2),
)


@pytest.mark.parametrize("value", ["", False, [], {}, "0.5", [0.5], True])
def test_read_lambda_refuses_falsy_non_numbers_as_it_refuses_the_others(value):
    with pytest.raises(TypeError, match=r"global_context_broadcast_lambda must be a real number >= 0 .*null"):
        read_lambda(_config(**{LAMBDA_KEY: value}))


@settings(deadline=None)  # a busy CI machine must not fail it on time
@given(NON_NUMBERS)
def test_read_lambda_refuses_every_non_number_and_only_absent_or_null_is_off(value):
    assert read_lambda(_config()) == 0.0 and read_lambda(_config(**{LAMBDA_KEY: None})) == 0.0
    with pytest.raises(TypeError, match="must be a real number"):
        read_lambda(_config(**{LAMBDA_KEY: value}))


@settings(deadline=None)
@given(st.one_of(NON_NUMBERS, st.integers(), st.floats()).filter(lambda v: v not in SCOPES))
def test_scope_and_videos_refuse_every_value_they_do_not_name(value):
    assert read_scope(_config(**{SCOPE_KEY: None})) == "image" and read_videos(_config(**{VIDEOS_KEY: None})) is False
    with pytest.raises(ValueError, match="global_context_broadcast_scope must be one of|was renamed"):
        read_scope(_config(**{SCOPE_KEY: value}))
    if not isinstance(value, bool):
        with pytest.raises(ValueError, match="global_context_broadcast_videos must be true or false"):
            read_videos(_config(**{VIDEOS_KEY: value}))


# the bound: a lambda whose result cannot be represented is refused


@settings(deadline=None)
@given(st.floats(min_value=0, allow_infinity=False))
def test_validate_lambda_accepts_up_to_the_bound_and_refuses_above_it_naming_it(value):
    if value <= MAX_LAMBDA:
        assert validate_lambda(value) == value
    else:
        with pytest.raises(ValueError, match=r"must be <= 1000, got .*overflows float16"):
            validate_lambda(value)


def test_1e308_is_refused_and_the_bound_keeps_half_precision_finite():
    with pytest.raises(ValueError, match="must be <= 1000, got 1e\\+308"):
        validate_lambda(1e308)
    # the worst case at the bound: entries of 32, mean entries ~31, a token pointing away from it (1 - cos = 2):
    # -32 + 1000 * 2 * 31 = 61952 < 65504, float16's largest value (tests/test_op_triton.py: the kernels)
    x = torch.full((64, 16), 32.0)
    x[0] = -32.0
    out = agci.global_context_broadcast(x.half(), MAX_LAMBDA, impl="reference")
    assert out.isfinite().all() and out.abs().max() == 61952


# lambdas as text: -0 is 0, only plain numbers are read


def test_minus_zero_is_zero_in_every_parsed_and_written_lambda():
    assert [format_lambda(v) for v in parse_lambdas("-0,0.5")] == ["0", "0.5"]
    assert parse_lambdas("-0,0,0.0,-0e5") == [0.0] and format_lambda(-0.0) == "0"
    assert math.copysign(1, validate_lambda(-0.0)) == 1.0
    assert lambda_dir(Path("out"), -0.0).name == "lambda_0"
    assert [format_lambda(v) for v in build_parser().parse_args(["probe", "--lambda=-0,0.5"]).lambdas] == ["0", "0.5"]


@settings(deadline=None)
@given(st.lists(st.floats(0, MAX_LAMBDA) | st.just(-0.0), min_size=1, max_size=5))
def test_parse_lambdas_round_trips_format_lambda_once_each_and_never_writes_a_sign(values):
    parsed = parse_lambdas(",".join(format_lambda(v) for v in values))
    assert parsed == list(dict.fromkeys(v + 0.0 for v in values))
    assert not any(format_lambda(v).startswith("-") for v in parsed)


@pytest.mark.parametrize("text", ["", ",", " , "])
def test_parse_lambdas_refuses_an_empty_list(text):
    with pytest.raises(ValueError, match="no lambda in"):
        parse_lambdas(text)


@pytest.mark.parametrize("text", ["1_0", "0x1p-1", "١", "0.5f", "1e", ".", "0,5"])
def test_parse_lambda_refuses_what_float_might_read(text):
    with pytest.raises(ValueError, match="is not a number"):
        parse_lambda(text)


@settings(deadline=None)
@given(st.text(max_size=8))
def test_parse_lambda_reads_only_plain_decimal_or_scientific_text(text):
    try:
        value = parse_lambda(text)
    except ValueError:
        return
    assert set(text.strip()) <= set("0123456789.eE+-") and value == float(text)


@settings(deadline=None)
@given(st.floats(0, MAX_LAMBDA))
def test_parse_lambda_reads_repr_and_scientific_notation_exactly(value):
    assert parse_lambda(repr(value)) == value and parse_lambda(f"{value:.17e}") == value
