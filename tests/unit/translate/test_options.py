"""Ollama `options` → vLLM sampling fields."""

from __future__ import annotations

import pytest

from vllama.translate.errors import TranslationError
from vllama.translate.options import max_tokens, parse_options, sampling_params


def test_every_mapped_option_reaches_its_vllm_name() -> None:
    options = parse_options(
        {
            "temperature": 0.2,
            "top_k": 7,
            "top_p": 0.5,
            "min_p": 0.05,
            "seed": 42,
            "stop": ["\n\n", "User:"],
            "repeat_penalty": 1.3,
            "presence_penalty": 0.4,
            "frequency_penalty": 0.6,
        }
    )
    assert sampling_params(options) == {
        "temperature": 0.2,
        "top_k": 7,
        "top_p": 0.5,
        "min_p": 0.05,
        "seed": 42,
        "stop": ["\n\n", "User:"],
        "repetition_penalty": 1.3,
        "presence_penalty": 0.4,
        "frequency_penalty": 0.6,
    }


def test_omitted_options_get_no_ollama_defaults() -> None:
    # The model's generation_config (applied by vLLM) must win: nothing is invented.
    assert sampling_params(parse_options({})) == {}
    assert sampling_params(parse_options(None)) == {}


@pytest.mark.parametrize(("num_predict", "expected"), [(5, 5), (-1, None), (-2, None), (0, None)])
def test_num_predict_becomes_max_tokens_only_when_positive(
    num_predict: int, expected: int | None
) -> None:
    assert max_tokens(parse_options({"num_predict": num_predict})) == expected


def test_random_seed_is_not_sent() -> None:
    assert "seed" not in sampling_params(parse_options({"seed": -1}))


def test_integral_floats_count_as_integers_and_ints_as_floats() -> None:
    options = parse_options({"num_predict": 8.0, "temperature": 1})
    assert options == {"num_predict": 8, "temperature": 1.0}
    assert isinstance(options["num_predict"], int)


def test_unknown_and_legacy_keys_are_ignored() -> None:
    legacy = {
        "mirostat": 2,
        "mirostat_eta": 0.1,
        "tfs_z": 1.0,
        "penalize_newline": True,
        "numa": False,
        "low_vram": True,
        "f16_kv": True,
        "whatever": {"x": 1},
    }
    assert parse_options(legacy) == {}


def test_load_time_options_are_type_checked_but_not_sent() -> None:
    options = parse_options({"num_ctx": 4096, "num_thread": 8, "use_mmap": True})
    assert sampling_params(options) == {}


def test_a_lone_stop_string_is_a_list() -> None:
    assert sampling_params(parse_options({"stop": "END"})) == {"stop": ["END"]}


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"temperature": "hot"}, "options.temperature", "float"),
        ({"num_predict": 1.5}, "options.num_predict", "integer"),
        ({"top_k": True}, "options.top_k", "integer"),
        ({"stop": [1, 2]}, "options.stop", "array"),
        ({"use_mmap": "yes"}, "options.use_mmap", "boolean"),
    ],
)
def test_wrong_types_name_the_option(options: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(TranslationError) as info:
        parse_options(options)
    assert info.value.field == field
    key = field.split(".", 1)[1]
    assert f'option "{key}" must be of type {words}' in info.value.message


def test_options_must_be_an_object() -> None:
    with pytest.raises(TranslationError) as info:
        parse_options(["temperature", 1])
    assert info.value.field == "options"
