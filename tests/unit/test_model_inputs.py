"""What the internal Triton models make of malformed inputs, checked without a server: one request error
each (`InputError`, answered as HTTP 400), never a traceback or a `NaN` in JSON."""

from __future__ import annotations

import json
import math

import pytest

from qmd_triton.errors import InputError
from qmd_triton.search.hybrid import Plan
from qmd_triton.serving.triton.common import json_bytes, one_line
from qmd_triton.serving.triton.fuse import read_payload
from qmd_triton.text.tokenization import decode_text


@pytest.mark.parametrize("raw, message", [
    ("nope", "plan is not valid JSON"),
    ("[1, 2]", "malformed plan: must be a JSON object"),
    ("{}", "malformed plan: query must be a string"),
    ('{"query": 5}', "malformed plan: query must be a string"),
    ('{"query": "q", "lex": "x"}', "malformed plan: lex must be a list of strings"),
    ('{"query": "q", "options": []}', "malformed plan: options must be a JSON object"),
    ('{"query": "q", "options": {"n": "a"}}', "n must be a positive integer, got 'a'"),
    ('{"query": "q", "what": 1}', "malformed plan: unknown key(s) what"),
    ('{"query": "q", "mode": "nope"}', "plan mode must be one of"),
    ("[" * 5000 + "]" * 5000, "plan is nested too deeply"),
])
def test_a_malformed_plan_is_one_input_error(raw: str, message: str):
    with pytest.raises(InputError) as e:
        Plan.from_json(raw)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("raw", [
    "nope", "[1]", '{"plan": 1, "candidates": []}', '{"plan": {}, "candidates": {}}',
    '{"plan": {}, "candidates": [1]}', '{"plan": {}, "candidates": [{"explain": {"rrf_rank": "1"}}]}',
    '{"plan": {"options": []}, "candidates": []}', '{"plan": {"options": {"n": 0}}, "candidates": []}',
    "{" * 3000,
])
def test_malformed_candidates_are_one_input_error(raw: str):
    with pytest.raises(InputError, match="candidates|n must be"):
        read_payload(raw)


def test_candidates_as_retrieve_sends_them_are_read():
    payload = read_payload(json.dumps({"plan": {"options": {"n": 3}}, "candidates": [{"explain": {"rrf_rank": 1}}]}))
    assert payload["plan"]["options"]["n"] == 3


def test_json_never_holds_nan_or_infinity():
    body = json_bytes([{"score": math.nan, "rank": 1, "more": [math.inf, 0.5]}])
    assert json.loads(body) == [{"score": None, "rank": 1, "more": [None, 0.5]}]
    assert b"NaN" not in body and b"Infinity" not in body


def test_utf8_errors_name_the_input():
    with pytest.raises(InputError, match=r"^query is not valid UTF-8 \(byte 0xff at offset 1\)$"):
        decode_text(b"a\xff", None, "query")
    with pytest.raises(InputError, match=r"^options is not valid UTF-8 \(byte 0xc3 at offset 0\)$"):
        decode_text(b"\xc3(", None, "options")
    with pytest.raises(InputError, match=r"^kind\[2\] is not valid UTF-8"):
        decode_text(b"\xff", 2, "kind")


def test_error_messages_are_one_line():
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 5000)) == 1000
