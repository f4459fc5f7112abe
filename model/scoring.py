"""Held-out loss of a Hugging Face causal language model: bits per byte and perplexity on text, and the
masked loss on token rows (the IFT artifact's held-out conversations).

Benchmark tasks are scored by lm-evaluation-harness (tasks/harness.py); this module scores what the
harness has no metric for in our terms: the same text read by models with different tokenizers.

- Text (`text_loss`): each document is tokenized by the model's own tokenizer (no special tokens
  added; special-token strings in the text stay text), preceded by one prefix token — the
  tokenizer's BOS, else its EOS, as the harness's prefix token — so that every token of the document
  is predicted. Documents longer than `window` tokens are read in windows of at most `window` tokens
  that advance by `stride` tokens; every token is scored exactly once, in the first window that
  reaches it, so each token after the first window sees at least `window - stride` tokens of context
  (stride == window: disjoint windows, the harness's rolling log-likelihood). The windows are the
  harness's own (`lm_eval.utils.get_rolling_token_windows` with context_len = window - stride + 1).
- Bits per byte = the sum of the token losses in nats / (ln 2 x the UTF-8 bytes of the scored text):
  unlike perplexity, comparable across tokenizers. Perplexity = exp(nats / tokens).
- Rows (`row_loss`): rows of token ids (each predicting ids[1:]), padding excluded, and with a loss
  mask only the targets whose mask is 1 (as in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass
class Loss:
    """Summed negative log-likelihood (nats) over scored tokens, and the text they cover."""

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def add(self, other: "Loss") -> "Loss":
        return Loss(self.nats + other.nats, self.tokens + other.tokens, self.bytes + other.bytes,
                    self.documents + other.documents)

    @property
    def loss(self) -> float | None:
        return self.nats / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.nats / self.tokens) if self.tokens else None

    @property
    def bits_per_byte(self) -> float | None:
        return self.nats / (math.log(2) * self.bytes) if self.bytes else None

    def as_dict(self) -> dict:
        return {"nats": self.nats, "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents,
                "loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


def prefix_token(tokenizer) -> int:
    """The token every document is read after: BOS, else EOS (lm-evaluation-harness's choice)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a document with")


def context_length(model) -> int:
    """The model's context in tokens, from its config."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(model).__name__}: its config names no context length (max_position_embeddings)")


def windows(ids: Sequence[int], prefix: int, window: int, stride: int) -> list[tuple[list[int], int]]:
    """(the window's tokens, how many of its last tokens are scored) for one document: the model reads all
    but the last token and predicts tokens[1:]; only the last `scored` predictions count."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    pairs = get_rolling_token_windows(list(ids), prefix, max_seq_len=window, context_len=window - stride + 1)
    return [(context + targets, len(targets)) for context, targets in map(make_disjoint_window, pairs)]


def text_loss(model, tokenizer, texts: Iterable[str], window: int | None = None, stride: int | None = None,
              batch_size: int = 8) -> Loss:
    """The loss of `model` on the documents (see the module docstring); window None: the model's context,
    stride None: the window (disjoint windows)."""
    window = min(window or context_length(model), context_length(model))
    stride = min(stride or window, window)
    prefix = prefix_token(tokenizer)
    total = Loss()
    pending: list[tuple[list[int], int]] = []
    for text in texts:
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if not ids:
            continue
        pending += windows(ids, prefix, window, stride)
        total = total.add(Loss(0.0, len(ids), len(text.encode("utf-8")), 1))
        while len(pending) >= batch_size:
            total.nats += _windows_nll(model, pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        total.nats += _windows_nll(model, pending)
    return total


def row_loss(model, rows: np.ndarray, pad_id: int, masks: np.ndarray | None = None, batch_size: int = 8) -> Loss:
    """The loss of `model` on token rows (ids predicting ids[1:]), over the targets training scores
    (model/loss.py: the loss mask where there is one, else every id but pad_id). `bytes` stays 0: rows are
    tokens, not text."""
    import torch

    from .loss import targets_and_weights

    total = Loss()
    for start in range(0, len(rows), batch_size):
        batch = torch.as_tensor(np.asarray(rows[start:start + batch_size], dtype=np.int64))
        mask = torch.as_tensor(np.asarray(masks[start:start + batch_size])) if masks is not None else None
        _, targets, keep = targets_and_weights(batch, pad_id, mask)
        targets = targets.clone()
        targets[~keep] = -100
        total.nats += _nll(model, batch[:, :-1], torch.ones_like(batch[:, :-1]), targets)
        total.tokens += int(keep.sum())
        total.documents += len(batch)
    return total


def _windows_nll(model, batch: list[tuple[list[int], int]]) -> float:
    """Summed NLL of the scored tokens of a batch of windows (right-padded to the longest)."""
    import torch

    length = max(len(tokens) for tokens, _ in batch) - 1
    inputs = torch.zeros((len(batch), length), dtype=torch.long)
    attention = torch.zeros_like(inputs)
    labels = torch.full_like(inputs, -100)
    for row, (tokens, scored) in enumerate(batch):
        inputs[row, :len(tokens) - 1] = torch.tensor(tokens[:-1])
        attention[row, :len(tokens) - 1] = 1
        labels[row, len(tokens) - 1 - scored:len(tokens) - 1] = torch.tensor(tokens[-scored:])
    return _nll(model, inputs, attention, labels)


def _nll(model, inputs, attention, labels) -> float:
    """Summed cross-entropy (nats) of the logits at every position whose label is not -100."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=inputs.to(device), attention_mask=attention.to(device)).logits
        losses = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.to(device).flatten(),
                                                   ignore_index=-100, reduction="sum")
    return float(losses)
