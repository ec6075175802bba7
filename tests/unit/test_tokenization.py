
import pytest

from qmd_triton.errors import ConfigError, InputError
from qmd_triton.text.tokenization import PromptFormats, bucket_for, decode_text, parse_buckets


def test_parse_buckets_adds_max_length_and_drops_larger_when_given_a_spec():
    assert parse_buckets("64,16,512", 256) == (16, 64, 256)


def test_parse_buckets_is_empty_when_spec_is_blank():
    assert parse_buckets("", 256) == ()


def test_parse_buckets_raises_when_spec_is_not_numeric():
    with pytest.raises(ConfigError, match="comma-separated integers"):
        parse_buckets("16,abc", 256)


def test_bucket_for_picks_smallest_holding_bucket():
    assert bucket_for(17, (16, 32, 64)) == 32
    assert bucket_for(16, (16, 32, 64)) == 16
    assert bucket_for(100, ()) == 100


def test_prompt_formats_raise_when_text_placeholder_missing():
    with pytest.raises(ConfigError, match="query_prompt must contain"):
        PromptFormats(query="query: ")


def test_prompt_formats_wrap_text_by_kind():
    p = PromptFormats(query="query: {text}", document="passage: {text}")
    assert p.apply("x", "query") == "query: x"
    assert p.apply("x", "document") == "passage: x"
    with pytest.raises(InputError, match="kind must be one of"):
        p.apply("x", "other")


def test_decode_text_names_offset_when_bytes_are_not_utf8():
    with pytest.raises(InputError, match=r"text\[3\] is not valid UTF-8 \(byte 0xff at offset 2\)"):
        decode_text(b"ab\xffcd", 3)


