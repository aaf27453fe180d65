"""--max_length with ms-swift's truncation strategies, on the demo tokenizer (one token per character)."""

import pytest
from datasets import Dataset

from swift_cispo.demo.tiny import build_tokenizer
from swift_cispo.errors import UserError
from swift_cispo.prompt_length import apply_max_length, keep_last, prompt_token_ids


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_keep_last_is_left_truncation():
    assert keep_last([1, 2, 3, 4, 5], 2) == [4, 5]
    assert keep_last([1, 2], 5) == [1, 2]


def test_delete_drops_exactly_the_long_prompts_and_counts_them(tokenizer):
    rows = Dataset.from_dict({"prompt": ["1+1=", "12+34=", "9="], "solution": ["2", "46", "9"]})
    limit = len(prompt_token_ids(tokenizer, "1+1="))
    kept, affected = apply_max_length(rows, tokenizer, limit, "delete")
    assert affected == 1
    assert kept["solution"] == ["2", "9"]


def test_left_keeps_the_end_of_a_long_prompt(tokenizer):
    rows = Dataset.from_dict({"prompt": ["12+34=", "9="], "solution": ["46", "9"]})
    out, affected = apply_max_length(rows, tokenizer, 3, "left")
    assert affected == 1
    assert len(prompt_token_ids(tokenizer, out[0]["prompt"])) == 3
    assert out[0]["prompt"].replace(" ", "").endswith("34=")
    assert out[1]["prompt"] == "9="


def test_left_truncates_a_conversation_to_its_rendered_end(tokenizer):
    chat = [{"role": "user", "content": "123456789+1="}]
    rows = Dataset.from_dict({"prompt": [chat]})
    full = prompt_token_ids(tokenizer, chat)
    out, affected = apply_max_length(rows, tokenizer, len(full) - 2, "left")
    assert affected == 1
    assert isinstance(out[0]["prompt"], str)
    assert tokenizer(out[0]["prompt"], add_special_tokens=False)["input_ids"] == full[2:]


def test_no_limit_and_no_long_rows_change_nothing(tokenizer):
    rows = Dataset.from_dict({"prompt": ["1="]})
    assert apply_max_length(rows, tokenizer, None, "delete") == (rows, 0)
    assert apply_max_length(rows, tokenizer, 100, "left")[1] == 0


def test_delete_of_every_row_is_one_sentence(tokenizer):
    rows = Dataset.from_dict({"prompt": ["12345="]})
    with pytest.raises(UserError, match="every prompt is longer than --max_length 2 tokens"):
        apply_max_length(rows, tokenizer, 2, "delete")
