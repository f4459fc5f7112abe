"""Parameter counts agree with transformers' GPT-2 built at the same size."""

from __future__ import annotations

import pytest

from model.sizing import chinchilla_tokens, gpt2_parameters


@pytest.mark.parametrize("n_layer, n_head, d_model, n_positions, vocab", [(2, 2, 64, 128, 1000), (4, 4, 128, 256, 8192)])
def test_parameters_match_transformers_gpt2(n_layer, n_head, d_model, n_positions, vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=d_model, n_positions=n_positions,
                                       vocab_size=vocab, tie_word_embeddings=True))
    assert gpt2_parameters(n_layer, d_model, n_positions, vocab) == model.num_parameters()


def test_gpt2_124m_and_chinchilla():
    assert gpt2_parameters(12, 768, 1024, 50257) == 124_439_808  # GPT-2 small as published
    assert chinchilla_tokens(124_439_808) == 2_488_796_160
