"""Chat data for instruction fine-tuning: validating chat JSONL lines, the chat template built on the
tokenizer's reserved role tokens, and encoding a conversation into ids with a loss mask.

A line is a JSON object with `messages`: a list of {"role": "system" | "user" | "assistant",
"content": non-empty string}; an optional system message first, then user and assistant turns
alternating, starting with the user and ending with the assistant. A line that breaks this is
rejected with a reason (invalid_json, not_an_object, no_messages, bad_message, bad_role,
empty_content, bad_turn_order, no_assistant_turn) for the quarantine.

The template renders each turn as `<role token>\\n{content}<end token>\\n`, e.g.

    <|system|>\\nYou are terse.<|end|>\\n<|user|>\\nHi<|end|>\\n<|assistant|>\\nHello.<|end|>\\n

Only the assistant turns are trained on: their content tokens and the end token that closes them (so
the model learns to stop) have loss mask 1, everything else 0. Special tokens split the text, so
encoding the pieces between them equals encoding the rendered string with the tokenizer (tested), and
`jinja_template()` renders the same string for `transformers`' `apply_chat_template`.

A model that brings its own tokenizer (continued pretraining or fine-tuning of a user's checkpoint)
brings its own chat template (Jinja, rendered by transformers' `apply_chat_template`); `TemplateChatEncoder`
encodes with it: the conversation is rendered once, and the loss mask covers what each assistant turn
adds to the rendering — the text between the rendering of the turns before it with the generation prompt
and the rendering including it (its content and the template's end-of-turn marker). A checkpoint without
a template gets `PLAIN_TEMPLATE`, which needs no new tokens: role names as text, the end-of-text token
closing each turn.

`ChatPacker` packs several conversations per training row (each followed by end-of-text), never
splitting one across rows.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatReject:
    reason: str
    detail: str


def parse_chat_line(line: str | bytes) -> list[dict] | ChatReject:
    """The conversation's messages, or why the line cannot be one."""
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ChatReject("invalid_json", str(exc)[:200])
    if not isinstance(item, dict):
        return ChatReject("not_an_object", f"a JSON {type(item).__name__}")
    messages = item.get("messages")
    if not isinstance(messages, list) or not messages:
        return ChatReject("no_messages", "`messages` must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return ChatReject("bad_message", f"message {index} needs a string `content`")
        if message.get("role") not in ROLES:
            return ChatReject("bad_role", f"message {index} has role {message.get('role')!r}; allowed: {ROLES}")
        if not message["content"].strip():
            return ChatReject("empty_content", f"message {index} ({message['role']}) is empty")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * len(turns)
    if [m["role"] for m in turns] != expected[:len(turns)]:
        return ChatReject("bad_turn_order", "after an optional system message, user and assistant must alternate, "
                                            "starting with the user")
    if not turns or turns[-1]["role"] != "assistant":
        return ChatReject("no_assistant_turn", "the conversation must end with an assistant message")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@dataclass(frozen=True)
class ChatTemplate:
    """Renders and encodes conversations with the role tokens of the tokenizer stage (their spellings)."""

    system: str = "<|system|>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"

    def role_token(self, role: str) -> str:
        return {"system": self.system, "user": self.user, "assistant": self.assistant}[role]

    def render(self, messages: list[dict]) -> str:
        return "".join(f"{self.role_token(m['role'])}\n{m['content']}{self.end}\n" for m in messages)

    def encode(self, tokenizer, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, loss mask) of the rendered conversation; `tokenizer` is a tokenizers.Tokenizer."""
        ids: list[int] = []
        mask: list[int] = []
        end_id = tokenizer.token_to_id(self.end)
        for message in messages:
            trained = message["role"] == "assistant"
            ids.append(tokenizer.token_to_id(self.role_token(message["role"])))
            mask.append(0)
            content = tokenizer.encode("\n" + message["content"], add_special_tokens=False).ids
            ids += content
            mask += [int(trained)] * len(content)
            ids.append(end_id)
            mask.append(int(trained))
            newline = tokenizer.encode("\n", add_special_tokens=False).ids
            ids += newline
            mask += [0] * len(newline)
        return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)

    def jinja_template(self) -> str:
        """The same rendering as a chat_template for transformers (tokenizer_config.json)."""
        # Newlines go through expressions: transformers renders with trim_blocks, which drops a newline
        # written right after a block tag.
        return ("{% for message in messages %}"
                f"{{% if message['role'] == 'system' %}}{self.system}"
                f"{{% elif message['role'] == 'user' %}}{self.user}"
                f"{{% else %}}{self.assistant}{{% endif %}}"
                "{{ '\\n' + message['content'] }}" f"{self.end}" "{{ '\\n' }}"
                "{% endfor %}"
                f"{{% if add_generation_prompt %}}{self.assistant}{{{{ '\\n' }}}}{{% endif %}}")


# For a checkpoint whose tokenizer has no chat template: plain-text role headers, each turn closed by the
# end-of-text token (so generation stops there), no token added to the vocabulary.
PLAIN_TEMPLATE = ("{% for message in messages %}{{ '### ' + message['role'] + ':\\n' + message['content'] + eos_token + "
                  "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}")


class TemplateNotIncremental(ValueError):
    """The template renders a conversation so that an earlier rendering is not a prefix of a later one."""


class TemplateChatEncoder:
    """Encodes conversations with a transformers tokenizer and a Jinja chat template (see the module docstring)."""

    def __init__(self, tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """(the rendered conversation, the character spans each assistant turn adds)."""
        text = self.render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt, through = self.render(messages[:index], True), self.render(messages[:index + 1])
            if not (text.startswith(through) and through.startswith(prompt)):
                raise TemplateNotIncremental(f"rendering turn {index} does not extend the rendering of the turns "
                                             f"before it")
            spans.append((len(prompt), len(through)))
        return text, spans

    def encode(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, loss mask): 1 on the tokens that start inside an assistant turn's span."""
        text, spans = self.assistant_spans(messages)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = np.array([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
        mask = np.zeros(len(starts), dtype=np.uint8)
        for begin, end in spans:
            mask[(starts >= begin) & (starts < end)] = 1
        return np.asarray(encoded["input_ids"], dtype=np.int64), mask

    def end_of_turn_id(self) -> int | None:
        """The special token closing an assistant turn (e.g. <|im_end|>), for generation to stop at."""
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        ids, mask = self.encode(messages)
        special = set(self.tokenizer.all_special_ids) | {int(i) for i in getattr(self.tokenizer, "added_tokens_decoder", {})}
        return next((int(i) for i in ids[mask.astype(bool)] if int(i) in special), None)


def read_lines(path: Path, max_bytes: int) -> Iterator[bytes | None]:
    """The lines of a JSONL file, plain or zstd-compressed (.zst), without the newline; a line longer
    than `max_bytes` is skipped in chunks (never held in memory) and yields None."""
    if path.suffix == ".zst":
        import zstandard

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield from _capped_lines(io.BufferedReader(reader), max_bytes)
    else:
        with path.open("rb") as handle:
            yield from _capped_lines(handle, max_bytes)


def _capped_lines(handle, max_bytes: int) -> Iterator[bytes | None]:
    while line := handle.readline(max_bytes + 1):
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line.rstrip(b"\r\n")


class ChatPacker:
    """Packs encoded conversations (each followed by end-of-text) into rows of `width` tokens without
    splitting one across rows: a conversation that does not fit in the current row starts the next one,
    and the row is closed with padding (mask 0). Conversations longer than a row are refused upstream."""

    def __init__(self, width: int, eos_id: int, pad_id: int, dtype: np.dtype):
        self.width, self.eos_id, self.pad_id, self.dtype = width, eos_id, pad_id, dtype
        self._ids: list[int] = []
        self._mask: list[int] = []
        self.rows: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.paddings: list[int] = []  # per row: the pad positions closing it

    def fits(self, ids: np.ndarray) -> bool:
        return len(ids) + 1 <= self.width

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        if not self.fits(ids):
            raise ValueError(f"a conversation of {len(ids)} tokens does not fit a row of {self.width}")
        if len(self._ids) + len(ids) + 1 > self.width:
            self._close_row()
        self._ids += [*ids.tolist(), self.eos_id]
        self._mask += [*mask.tolist(), 0]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, masks) of all rows, shape (rows, width)."""
        if self._ids:
            self._close_row()
        if not self.rows:
            return np.zeros((0, self.width), self.dtype), np.zeros((0, self.width), np.uint8)
        return np.stack(self.rows), np.stack(self.masks)

    def _close_row(self) -> None:
        padding = self.width - len(self._ids)
        self.rows.append(np.asarray(self._ids + [self.pad_id] * padding, dtype=self.dtype))
        self.masks.append(np.asarray(self._mask + [0] * padding, dtype=np.uint8))
        self.paddings.append(padding)
        self._ids, self._mask = [], []
