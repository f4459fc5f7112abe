"""Chat data for IFT: line validation with reasons, the template's loss mask over assistant tokens only,
and the round trip through the tokenizer and transformers' apply_chat_template."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corpus.chat import ChatPacker, ChatReject, ChatTemplate, parse_chat_line, read_lines

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


def test_training_loss_is_exactly_the_mean_over_assistant_tokens(tokenizer):
    """Pack two conversations, compute the trainer's loss, compare with the mean cross-entropy of the
    assistant targets picked by hand."""
    import torch
    import torch.nn.functional as F

    from model.loss import lm_loss, targets_and_weights

    template = ChatTemplate()
    packer = ChatPacker(256, eos_id=0, pad_id=1, dtype=np.uint16)
    encoded = [template.encode(tokenizer, CONVERSATION), template.encode(tokenizer, CONVERSATION[1:3])]
    for ids, mask in encoded:
        packer.add(ids, mask)
    rows, masks = packer.finish()
    assert rows.shape == (1, 256) and masks.sum() == sum(int(m.sum()) for _, m in encoded)
    rows_t, masks_t = torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(masks)
    logits = torch.randn(1, 255, tokenizer.get_vocab_size(), generator=torch.Generator().manual_seed(0))
    inputs, targets, weights = targets_and_weights(rows_t, 1, masks_t)
    loss = lm_loss(logits, targets, weights)
    expected_ids = np.concatenate([ids[mask == 1] for ids, mask in encoded])
    picked = [i for i in range(255) if masks[0, i + 1] == 1]
    assert np.array_equal(rows[0, 1:][picked], expected_ids)  # exactly the assistant tokens are targets
    by_hand = F.cross_entropy(logits[0, picked], targets[0, picked])
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_packer_never_splits_a_conversation():
    packer = ChatPacker(10, eos_id=0, pad_id=1, dtype=np.uint16)
    for length in (4, 4, 6, 9):
        packer.add(np.full(length, 7), np.ones(length, np.uint8))
    rows, masks = packer.finish()
    # [4+eos, 4+eos] | [6+eos, pad x3] | [9+eos]
    assert rows.shape == (3, 10)
    assert rows[1].tolist() == [7] * 6 + [0, 1, 1, 1] and masks[1].tolist() == [1] * 6 + [0] * 4
    assert not packer.fits(np.zeros(10))
    with pytest.raises(ValueError, match="does not fit"):
        packer.add(np.zeros(10), np.zeros(10, np.uint8))


def test_read_lines_caps_long_lines_without_holding_them(tmp_path):
    import zstandard

    body = b'{"a": 1}\n' + b"x" * 5000 + b"\n" + b'{"b": 2}\r\n'
    (tmp_path / "plain.jsonl").write_bytes(body)
    (tmp_path / "packed.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    for name in ("plain.jsonl", "packed.jsonl.zst"):
        assert list(read_lines(tmp_path / name, 1000)) == [b'{"a": 1}', None, b'{"b": 2}']
