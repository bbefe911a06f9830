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
        (b"\xff\xfe", "f.jsonl", "f.jsonl", "invalid_encoding"),
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
