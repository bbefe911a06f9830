"""Reading forget/retain files: the three record shapes, the three formats, and errors
that name the file, line and field."""

from __future__ import annotations

import copy
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.data.encoding import (
    IGNORE_INDEX,
    encode_qa,
    encode_qa_many,
    encode_record_set,
    encode_text,
    render_prompt,
)
from core.data.records import parse_records
from core.errors import DataValidationError

TEMPLATE = "Question: {question}\nAnswer:"


def jsonl(*rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def test_tofu_records_with_paraphrases_and_perturbations():
    records = parse_records(
        jsonl(
            {
                "question": "Q1?",
                "answer": "A1.",
                "paraphrased_answer": "P1.",
                "perturbed_answer": ["W1.", "W2."],
                "author": "X",
            },
            {
                "question": "Q2?",
                "answer": "A2.",
                "paraphrased_answer": "P2.",
                "perturbed_answer": ["W3."],
            },
        ),
        name="forget.jsonl",
    )
    assert (records.kind, records.format, len(records)) == ("qa", "jsonl", 2)
    assert records.records[0].perturbed_answers == ["W1.", "W2."]
    assert records.records[0].meta == {"author": "X"}
    assert records.has_truth_ratio_fields


def test_csv_carries_perturbed_answers_as_a_json_list_and_reports_csv_lines():
    data = b'question,answer,perturbed_answer\nQ1?,A1.,"[""W1."", ""W2.""]"\nQ2?,,"[]"\n'
    with pytest.raises(DataValidationError) as error:
        parse_records(data, name="f.csv")
    assert error.value.param == "f.csv:3:answer"
    ok = parse_records(data.replace(b"Q2?,,", b"Q2?,A2.,"), name="f.csv")
    assert ok.records[0].perturbed_answers == ["W1.", "W2."]


def test_parquet_prompt_completion_and_text_shapes():
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["Say hi"], "completion": ["Hi."]}), buffer)
    completion = parse_records(buffer.getvalue(), name="c.parquet")
    assert (completion.kind, completion.records[0].prompt, completion.records[0].answer) == (
        "completion",
        "Say hi",
        "Hi.",
    )
    text = parse_records(jsonl({"text": "A long document."}), name="t.jsonl")
    assert text.kind == "text" and text.records[0].prompt is None


@pytest.mark.parametrize(
    "data,name,param,code",
    [
        (
            jsonl({"question": "Q?", "answer": "A."}, {"question": "Q?"}),
            "f.jsonl",
            "f.jsonl:2:answer",
            "missing_field",
        ),
        (
            b'{"question": "Q?", "answer": "A."}\n{"question": \n',
            "f.jsonl",
            "f.jsonl:2",
            "invalid_data",
        ),
        (jsonl({"question": "Q?", "answer": 3}), "f.jsonl", "f.jsonl:1:answer", "invalid_data"),
        (jsonl({"question": "Q?", "answer": "   "}), "f.jsonl", "f.jsonl:1:answer", "invalid_data"),
        (jsonl({"foo": "bar"}), "f.jsonl", "f.jsonl:1", "missing_field"),
        (b"", "f.jsonl", "f.jsonl", "empty_dataset"),
        (b"question,answer\n", "f.csv", "f.csv", "empty_dataset"),
        (b"\xff\xfe", "f.jsonl", "f.jsonl:1", "invalid_encoding"),
        (jsonl({"question": "Q?", "answer": "A."}), "f.txt", "f.txt", "unsupported_format"),
        (b"not parquet", "f.parquet", "f.parquet", "invalid_data"),
        (
            jsonl({"question": "Q?", "answer": "A.", "perturbed_answer": [1]}),
            "f.jsonl",
            "f.jsonl:1:perturbed_answer",
            "invalid_data",
        ),
    ],
)
def test_bad_files_name_the_file_line_and_field(data, name, param, code):
    with pytest.raises(DataValidationError) as error:
        parse_records(data, name=name)
    assert (error.value.param, error.value.code) == (param, code)
    assert error.value.message.startswith(param)


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


QA_COLUMNS = {"question": ["Q1?", "Q2?"], "answer": ["A1.", "A2."]}
HUGE_INTEGER = "9" * 5000  # longer than int() converts (4300 digits)
DEEP_LIST = "[" * 100_000 + "]" * 100_000  # deeper than the recursion limit


@pytest.mark.parametrize(
    "data,name,param",
    [
        (
            b'{"question": "Q?", "answer": "A."}\n{"question": "Q?", "answer": "A.", "n": '
            + HUGE_INTEGER.encode()
            + b"}",
            "f.jsonl",
            "f.jsonl:2",
        ),
        (
            b'[{"question": "Q?", "answer": "A."}, {"question": "Q?", "answer": "A.", "n": '
            + HUGE_INTEGER.encode()
            + b"}]",
            "f.json",
            "f.json:1",  # elements are decoded one by one: the element's line is named
        ),
        (
            b'{"question": "Q?", "answer": "A.", "n": ' + DEEP_LIST.encode() + b"}",
            "f.jsonl",
            "f.jsonl:1",
        ),
        (b"[" + DEEP_LIST.encode() + b"]", "f.json", "f.json:1"),
        # CSV cells carry perturbed answers JSON-encoded.
        (
            b'question,answer,perturbed_answer\nQ?,A.,"[' + HUGE_INTEGER.encode() + b']"\n',
            "f.csv",
            "f.csv:2:perturbed_answer",
        ),
        (
            b"question,answer,perturbed_answer\nQ?,A.," + DEEP_LIST.encode() + b"\n",
            "f.csv",
            "f.csv:2:perturbed_answer",
        ),
        # Syntax errors in a JSON array name the line of the text.
        (
            b'[{"question": "Q?", "answer": "A."},\n {"question": "Q?", "answer": "A."} {}]',
            "f.json",
            "f.json:2",
        ),
        (b'[{"question": "Q?", "answer": "A."}] []', "f.json", "f.json:1"),
        (b"\xc2\xa0[]", "f.json", "f.json:1"),  # no-break space is not JSON whitespace
        # Column names are stored in the dataset's row: Postgres refuses NUL and surrogates.
        (b'{"question": "Q?", "answer": "A.", "a\\u0000b": 1}', "f.jsonl", "f.jsonl:1:a\\x00b"),
        (
            jsonl(
                {"question": "Q?", "answer": "A."}, {"question": "Q?", "answer": "A.", "\ud800": 1}
            ),
            "f.jsonl",
            "f.jsonl:2:\\ud800",
        ),
        (b"question,answer,a\x00b\nQ?,A.,x\n", "f.csv", "f.csv:1:a\\x00b"),
        (parquet(pa.table({**QA_COLUMNS, "x\x00": [1, 2]})), "f.parquet", "f.parquet:x\\x00"),
        # Values pyarrow cannot turn into Python objects, named by row and column.
        (
            parquet(pa.table({**QA_COLUMNS, "at": pa.array([0, 2**62], pa.timestamp("ns"))})),
            "f.parquet",
            "f.parquet:2:at",
        ),
        (
            parquet(pa.table({**QA_COLUMNS, "day": pa.array([0, 2**31 - 1], pa.date32())})),
            "f.parquet",
            "f.parquet:2:day",
        ),
        (
            parquet(
                pa.table({**QA_COLUMNS, "at": pa.array([1, 2], pa.timestamp("s", tz="No/Zone"))})
            ),
            "f.parquet",
            "f.parquet:1:at",
        ),
        (
            parquet(pa.table({**QA_COLUMNS, "zzzz": ["x", "y"]})).replace(b"zzzz", b"z\xffzz"),
            "f.parquet",
            "f.parquet",
        ),
        (
            parquet(pa.table({**QA_COLUMNS, "note": ["ok", "yyyy"]})).replace(b"yyyy", b"y\xffyy"),
            "f.parquet",
            "f.parquet:2:note",
        ),
        (parquet(pa.table(QA_COLUMNS))[:-20], "f.parquet", "f.parquet"),
    ],
)
def test_hostile_files_are_invalid_data_naming_the_file_and_line(data, name, param):
    with pytest.raises(DataValidationError) as error:
        parse_records(data, name=name)
    assert (error.value.code, error.value.param) == ("invalid_data", param)
    assert error.value.message.startswith(param)


def test_csv_cells_longer_than_the_csv_modules_default_limit_are_read():
    document = "word " * 100_000  # 500 kB, beyond csv's default 128 KiB field limit
    data = f'text,{"long_header_" * 20_000}\n"{document}",x\n'.encode()
    records = parse_records(data, name="docs.csv")
    assert records.records[0].answer == document


def test_json_text_may_hold_line_separators_that_are_not_newlines():
    text = "first\u2028second\x85third\x1cfourth"
    data = json.dumps({"text": text}, ensure_ascii=False).encode() + b"\r\n"
    records = parse_records(data * 2, name="docs.jsonl")
    assert [r.answer for r in records.records] == [text, text]
    assert [r.line for r in records.records] == [1, 2]


def test_json_array_files_are_read_element_by_element():
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(3)]
    for text in (json.dumps(rows), json.dumps(rows, indent=2) + "\n"):
        records = parse_records(text.encode(), name="f.json")
        assert [(r.line, r.answer) for r in records.records] == [(1, "A0."), (2, "A1."), (3, "A2.")]
    with pytest.raises(DataValidationError) as error:
        parse_records(b" \n[ ]\n", name="f.json")
    assert error.value.code == "empty_dataset"


def test_an_answer_truncated_away_by_max_length_is_an_error(word_tokenizer):
    records = parse_records(
        jsonl({"question": "Where was he born? " * 10, "answer": "Here."}), name="f.jsonl"
    )
    with pytest.raises(DataValidationError) as error:
        encode_record_set(word_tokenizer, records, max_length=16, template=TEMPLATE)
    assert error.value.code == "answer_truncated" and error.value.param == "f.jsonl:1:question"
    # With room for part of the answer, the answer is cut, never the prompt.
    example = encode_qa(
        word_tokenizer, "Where?", "In the city of the lantern.", max_length=8, template=TEMPLATE
    )
    assert len(example.input_ids) == 8 and example.labels[: len(example.prompt_ids)] == [
        IGNORE_INDEX
    ] * len(example.prompt_ids)


def test_raw_text_is_cut_into_windows_that_start_with_bos(word_tokenizer):
    windows = encode_text(word_tokenizer, " ".join(["the city"] * 20), max_length=9)
    assert len(windows) == 5  # 40 tokens in windows of 8 (+ BOS)
    assert all(
        w.input_ids[0] == word_tokenizer.bos_token_id and w.labels[0] == IGNORE_INDEX
        for w in windows
    )


def test_prompts_use_the_chat_template_when_the_tokenizer_has_one(word_tokenizer):
    assert render_prompt(word_tokenizer, "Who?", TEMPLATE) == "Question: Who?\nAnswer:"
    tokenizer = copy.deepcopy(word_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
    assert render_prompt(tokenizer, "Who?", TEMPLATE) == "<s> Who? </s>"
    example = encode_qa(tokenizer, "Who?", "Me.", max_length=32, template=TEMPLATE)
    # The template brings its own BOS: no second one is added.
    assert example.input_ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("chat", [False, True])
def test_encoding_many_pairs_at_once_gives_each_pairs_own_encoding(word_tokenizer, chat):
    # The probes' batched encoding (one tokenizer call per kind of text, each prompt
    # once) must be the one-at-a-time encoding, truncation and record indices included.
    tokenizer = copy.deepcopy(word_tokenizer)
    if chat:
        tokenizer.chat_template = "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
    pairs = [
        ("Where was he born?", "In the city of the lantern.", 0),
        ("Where was he born?", "  In the city.  ", 0),
        ("Who?", "Me.", 1),
        ("Who?", "the city " * 12, 2),  # cut to max_length
    ]
    many = encode_qa_many(tokenizer, pairs, max_length=16, template=TEMPLATE)
    assert many == [
        encode_qa(tokenizer, q, a, max_length=16, template=TEMPLATE, record_index=i)
        for q, a, i in pairs
    ]
    assert len(many[3].input_ids) == 16 and [e.record_index for e in many] == [0, 0, 1, 2]
    with pytest.raises(DataValidationError) as error:
        encode_qa_many(
            tokenizer, [("Where was he born? " * 10, "Here.", 0)], max_length=16, template=TEMPLATE
        )
    assert error.value.code == "answer_truncated"
