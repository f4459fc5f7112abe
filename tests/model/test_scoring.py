"""Evaluation metrics against hand-computed values on a toy model with known next-token probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.scoring import ChoiceItem, continuation_logprob, last_word_accuracy, multiple_choice, perplexity, torch_scorer

# A bigram model over 4 tokens: P(next | current) is row `current` of this table, whatever came before.
BIGRAM = np.array([
    [0.1, 0.6, 0.2, 0.1],
    [0.25, 0.25, 0.25, 0.25],
    [0.7, 0.1, 0.1, 0.1],
    [0.1, 0.1, 0.1, 0.7],
])


def toy(ids):
    return np.log(BIGRAM[list(ids)])


def test_continuation_logprob_and_greedy():
    logprob, greedy = continuation_logprob(toy, [0], [1, 2])  # P(1|0) * P(2|1) = 0.6 * 0.25
    assert logprob == pytest.approx(math.log(0.6 * 0.25)) and not greedy  # after 1 all four tie; argmax is 0
    assert continuation_logprob(toy, [2], [0, 1]) == (pytest.approx(math.log(0.7 * 0.6)), True)
    with pytest.raises(ValueError, match="at least one token"):
        continuation_logprob(toy, [], [1])


def test_acc_and_acc_norm_by_hand():
    items = [
        # choice 0: P(1|0) = 0.6 (one token, 3 chars); choice 1: P(3|0) P(3|3) = 0.1 * 0.7 = 0.07 (2 tokens, 2 chars)
        ChoiceItem(context=[0], choices=[[1], [3, 3]], choice_chars=[3, 2], gold=0),
        # choice 0: P(0|2) = 0.7, 10 chars -> log(0.7)/10 = -0.0357; choice 1: P(1|2) = 0.1, 1 char -> -2.30
        ChoiceItem(context=[2], choices=[[0], [1]], choice_chars=[10, 1], gold=1),
    ]
    # acc: the first item right (0.6 > 0.07), the second wrong (0.7 > 0.1 but gold is 1) -> 0.5
    # acc_norm: item 1: log(0.6)/3 = -0.170 vs log(0.07)/2 = -1.33 -> 0 right; item 2: -0.0357 vs -2.30 -> 0 wrong
    assert multiple_choice(toy, items) == {"acc": 0.5, "acc_norm": 0.5, "items": 2}
    # a long cheap choice wins only after normalisation by its characters
    long_choice = ChoiceItem(context=[0], choices=[[1], [2, 0]], choice_chars=[1, 100], gold=1)
    # raw: log 0.6 = -0.51 vs log(0.2 * 0.7) = -1.97 -> 0; per char: -0.51 vs -0.0197 -> 1
    assert multiple_choice(toy, [long_choice]) == {"acc": 0.0, "acc_norm": 1.0, "items": 1}


def test_acc_mutual_info_by_hand():
    # after 1 every token has P 0.25: acc takes the first choice (0). Without the context (after 2),
    # P(0) = 0.7 and P(1) = 0.1, so choice 1 gains log(0.25/0.1) > 0 and choice 0 loses log(0.25/0.7) < 0.
    item = ChoiceItem(context=[1], choices=[[0], [1]], choice_chars=[1, 1], gold=1)
    assert multiple_choice(toy, [item], unconditional=[2]) == \
        {"acc": 0.0, "acc_norm": 0.0, "acc_mutual_info": 1.0, "items": 1}


def test_perplexity_by_hand():
    rows = np.array([[0, 2, 0, 1], [3, 3, 1, 1]])  # 1 is the padding here
    result = perplexity(toy, rows, pad_id=1)
    # targets of row 1: 2|0 (0.2), 0|2 (0.7); 1 is padding. row 2: 3|3 (0.7); then padding.
    expected = math.exp(-(math.log(0.2) + math.log(0.7) + math.log(0.7)) / 3)
    assert result["tokens"] == 3 and result["perplexity"] == pytest.approx(expected)


def test_masked_perplexity_counts_only_masked_targets():
    rows = np.array([[0, 1, 2, 0]])
    masks = np.array([[0, 0, 1, 1]])  # targets 2 (after 1) and 0 (after 2) count; 1 (after 0) does not
    result = perplexity(toy, rows, pad_id=3, masks=masks)
    assert result["tokens"] == 2
    assert result["loss"] == pytest.approx(-(math.log(0.25) + math.log(0.7)) / 2)


def test_last_word_accuracy_by_hand():
    items = [([2], [0]), ([0], [2]), ([3], [3, 3])]  # greedy: yes (0.7); no (1 has 0.6); yes (0.7, 0.7)
    result = last_word_accuracy(toy, items)
    assert result["acc"] == pytest.approx(2 / 3) and result["items"] == 3
    expected = math.exp(-(math.log(0.7) + math.log(0.2) + 2 * math.log(0.7)) / 4)
    assert result["perplexity"] == pytest.approx(expected)


def test_torch_scorer_matches_the_model_and_keeps_positions_when_truncating():
    import torch

    from model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, n_positions=8, n_layer=1, n_head=2, d_model=16)).eval()
    scorer = torch_scorer(gpt, max_length=8)
    ids = list(range(1, 7))
    table = scorer(ids)
    with torch.no_grad():
        direct = torch.log_softmax(gpt(torch.tensor([ids])), -1)[0].numpy()
    assert np.allclose(table, direct, atol=1e-6)
    longer = scorer(list(range(1, 13)))
    assert longer.shape == (12, 50) and np.isinf(longer[:4]).all() and np.isfinite(longer[4:]).all()
