"""Chat data for IFT: line validation with reasons, the template's loss mask over assistant tokens only,
and the round trip through the tokenizer and transformers' apply_chat_template."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.chat import ChatReject, ChatTemplate, parse_chat_line

CONVERSATION = [
    {"role": "system", "content": "You answer questions about the Debian installer."},
    {"role": "user", "content": "Which file holds the kernel?"},
    {"role": "assistant", "content": "vmlinuz, next to initrd.gz."},
    {"role": "user", "content": "And the ramdisk?"},
    {"role": "assistant", "content": "initrd.gz — «ramdisk-aftryk»."},
]


@pytest.fixture(scope="module")
def tokenizer():
    from pipeline.config import TokenizerConfig
    from tasks.tokenizer import train_tokenizer
    from tests.raw_inputs import english_paragraphs

    tok = train_tokenizer(iter(english_paragraphs() * 3), TokenizerConfig(vocab_size=400, min_frequency=1))
    tok.encode_special_tokens = False  # role tokens in the rendered string must be recognised
    return tok


@pytest.mark.parametrize("line, reason", [
    ("{oops", "invalid_json"),
    ("[1, 2]", "not_an_object"),
    ('{"messages": []}', "no_messages"),
    ('{"messages": [{"role": "user"}]}', "bad_message"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "bad_role"),
    ('{"messages": [{"role": "user", "content": "  "}]}', "empty_content"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', "bad_turn_order"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', "bad_turn_order"),
    ('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}', "no_assistant_turn"),
])
def test_invalid_lines_are_rejected_with_their_reason(line, reason):
    result = parse_chat_line(line)
    assert isinstance(result, ChatReject) and result.reason == reason


def test_a_valid_line_gives_its_messages():
    assert parse_chat_line(json.dumps({"messages": CONVERSATION, "id": 7})) == CONVERSATION


def test_the_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    template = ChatTemplate()
    ids, mask = template.encode(tokenizer, CONVERSATION)
    assert len(ids) == len(mask)
    trained = tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert trained == "".join(f"\n{answer}<|end|>" for answer in answers)
    untrained = tokenizer.decode(ids[mask == 0].tolist(), skip_special_tokens=False)
    assert "Which file holds the kernel?" in untrained and "vmlinuz" not in untrained


def test_template_round_trip_and_transformers_render_the_same(tokenizer):
    from transformers import PreTrainedTokenizerFast

    template = ChatTemplate()
    ids, _ = template.encode(tokenizer, CONVERSATION)
    rendered = template.render(CONVERSATION)
    assert tokenizer.decode(ids.tolist(), skip_special_tokens=False) == rendered
    assert np.array_equal(ids, tokenizer.encode(rendered, add_special_tokens=False).ids)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    fast.chat_template = template.jinja_template()
    assert fast.apply_chat_template(CONVERSATION, tokenize=False) == rendered
    prompt = fast.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == template.render(CONVERSATION[:2]) + "<|assistant|>\n"


def test_the_sample_chat_set_is_valid_and_rebuilds_byte_identically(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO, SAMPLE

    bundled = SAMPLE / "chat" / "debian_chat.jsonl"
    lines = bundled.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 50
    for line in lines:
        messages = parse_chat_line(line)
        assert not isinstance(messages, ChatReject), (line[:200], messages)
    rebuilt = tmp_path / "chat.jsonl"
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_chat_sample.py"), "--out", str(rebuilt)],
                   check=True, capture_output=True, cwd=REPO)
    assert rebuilt.read_bytes() == bundled.read_bytes()
