"""Scoring a language model for the evaluation stage: perplexity, multiple choice in lm-evaluation-harness's
style, and last-word (LAMBADA-style) accuracy.

Everything here works on a `NextTokenLogProbs` function — token ids in, log-probabilities of every next
token out (shape (len(ids), vocab)) — so the metrics can be checked on a toy model with known
probabilities, and any model (ours, or an HF one) can be plugged in with `torch_scorer`.

- perplexity: exp of the mean negative log-likelihood over all predicted tokens of the given rows
  (padding excluded), the same quantity the trainer reports as loss;
- multiple choice: the log-likelihood of each choice's tokens after the context; `acc` takes the
  highest, `acc_norm` the highest per character of the choice's text (as the harness does), and
  `acc_mutual_info` the highest gain over the choice's likelihood without the context (the harness's
  acc_mutual_info), each compared with the gold index;
- last word: the model's greedy continuation of the context must reproduce the target word's tokens
  exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

NextTokenLogProbs = Callable[[Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class ChoiceItem:
    context: list[int]
    choices: list[list[int]]  # token ids of each choice
    choice_chars: list[int]   # characters of each choice's text (acc_norm's denominator)
    gold: int


def continuation_logprob(logprobs: NextTokenLogProbs, context: Sequence[int], continuation: Sequence[int]
                         ) -> tuple[float, bool]:
    """(log P(continuation | context), whether every continuation token is the greedy choice)."""
    if not context:
        raise ValueError("the context must hold at least one token (e.g. the end-of-text token)")
    ids = list(context) + list(continuation)
    table = logprobs(ids[:-1])  # row i predicts ids[i + 1]
    start = len(context) - 1
    rows = table[start:start + len(continuation)]
    picked = rows[np.arange(len(continuation)), continuation]
    greedy = bool(np.all(rows.argmax(axis=1) == np.asarray(continuation)))
    return float(picked.sum()), greedy


def multiple_choice(logprobs: NextTokenLogProbs, items: Sequence[ChoiceItem],
                    unconditional: Sequence[int] | None = None) -> dict:
    """acc and acc_norm over the items (and the count); with `unconditional` (a context of its own, e.g.
    just the end-of-text token) also acc_mutual_info as lm-evaluation-harness: the choice whose
    log P(choice | context) - log P(choice | unconditional) is highest, which removes the bias towards
    choices that are likely anywhere."""
    correct = correct_norm = correct_mutual = 0
    for item in items:
        scores = [continuation_logprob(logprobs, item.context, choice)[0] for choice in item.choices]
        normalised = [score / max(chars, 1) for score, chars in zip(scores, item.choice_chars)]
        correct += int(np.argmax(scores)) == item.gold
        correct_norm += int(np.argmax(normalised)) == item.gold
        if unconditional is not None:
            prior = [continuation_logprob(logprobs, unconditional, choice)[0] for choice in item.choices]
            correct_mutual += int(np.argmax(np.subtract(scores, prior))) == item.gold
    count = len(items)
    result = {"acc": correct / count if count else None, "acc_norm": correct_norm / count if count else None,
              "items": count}
    if unconditional is not None:
        result["acc_mutual_info"] = correct_mutual / count if count else None
    return result


def last_word_accuracy(logprobs: NextTokenLogProbs, items: Sequence[tuple[list[int], list[int]]]) -> dict:
    """Share of (context, target word ids) pairs whose target the model produces greedily, and the
    target words' perplexity."""
    hits, total_logprob, total_tokens = 0, 0.0, 0
    for context, target in items:
        logprob, greedy = continuation_logprob(logprobs, context, target)
        hits += greedy
        total_logprob += logprob
        total_tokens += len(target)
    count = len(items)
    return {"acc": hits / count if count else None, "items": count,
            "perplexity": math.exp(-total_logprob / total_tokens) if total_tokens else None}


def perplexity(logprobs: NextTokenLogProbs, rows: np.ndarray, pad_id: int, masks: np.ndarray | None = None) -> dict:
    """exp(mean NLL) over every non-padding target of the rows (each row: ids, predicting ids[1:]); with
    `masks` (a loss mask per id, as in the token shards) only the targets whose mask is 1 count."""
    nll, tokens = 0.0, 0
    for index, row in enumerate(rows):
        row = [int(token) for token in row]
        table = logprobs(row[:-1])
        targets = np.asarray(row[1:])
        keep = targets != pad_id
        if masks is not None:
            keep &= np.asarray(masks[index][1:]).astype(bool)
        nll -= float(table[np.arange(len(targets)), targets][keep].sum())
        tokens += int(keep.sum())
    return {"perplexity": math.exp(nll / tokens) if tokens else None, "tokens": tokens,
            "loss": nll / tokens if tokens else None}


def torch_scorer(model, max_length: int) -> NextTokenLogProbs:
    """A NextTokenLogProbs for a torch model returning logits (ours, or an HF model's `.logits`); inputs
    longer than max_length keep their last max_length tokens (earlier rows are then padded with -inf
    so positions stay aligned with the ids)."""
    import torch

    def logprobs(ids: Sequence[int]) -> np.ndarray:
        window = list(ids)[-max_length:]
        with torch.no_grad():
            output = model(torch.tensor([window], dtype=torch.long))
            logits = getattr(output, "logits", output)[0].float()
            table = torch.log_softmax(logits, dim=-1).numpy()
        if len(window) < len(ids):
            table = np.concatenate([np.full((len(ids) - len(window), table.shape[1]), -np.inf), table])
        return table

    return logprobs
