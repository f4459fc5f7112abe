"""Held-out loss of HF causal LMs (GPT-2 and Llama, built here with random weights and a small BPE
tokenizer): bits per byte against a plain forward pass, windows against lm-evaluation-harness's rolling
log-likelihood and a plain windowed loop, masked row loss, and the prefix-token rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model.scoring import Loss, prefix_token, row_loss, text_loss, windows
from tests.conftest import SAMPLE

TEXTS = [json.loads(line)["context"] for line in (SAMPLE / "eval" / "debian_cloze.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


def tiny_model(family: str, vocab: int, context: int = 256):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=context, n_embd=32, n_layer=2, n_head=2,
                                          bos_token_id=0, eos_token_id=1)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, max_position_embeddings=context, hidden_size=32,
                                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, bos_token_id=0, eos_token_id=1)).eval()


def reference_nats(model, ids: list[int], window: int, stride: int) -> float:
    """A plain loop, one window per forward pass: the targets ids[1:] are scored once each, in the first
    window (of at most `window` inputs, each ending `stride` targets after the previous one) that reaches them."""
    nats, scored = 0.0, 0
    while scored < len(ids) - 1:
        end = min(scored + (window if scored == 0 else stride), len(ids) - 1)
        start = max(end - window, 0)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids[start:end]])).logits[0].double(), -1)
        nats -= sum(float(logprobs[target - 1 - start, ids[target]]) for target in range(scored + 1, end + 1))
        scored = end
    return nats


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bits_per_byte_of_short_documents_equal_a_plain_forward_pass(tokenizer, family):
    model = tiny_model(family, len(tokenizer))
    loss = text_loss(model, tokenizer, TEXTS[:10], batch_size=4)
    nats = 0.0
    for text in TEXTS[:10]:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            nats += float(model(ids, labels=ids).loss) * (ids.shape[1] - 1)
    size = sum(len(text.encode("utf-8")) for text in TEXTS[:10])
    assert loss.documents == 10 and loss.bytes == size
    assert loss.tokens == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:10])
    assert loss.nats == pytest.approx(nats, rel=1e-5)
    assert loss.bits_per_byte == pytest.approx(nats / (math.log(2) * size), rel=1e-5)
    assert loss.perplexity == pytest.approx(math.exp(nats / loss.tokens), rel=1e-5)


@pytest.mark.parametrize("window, stride, texts", [(16, 16, 4), (16, 5, 3), (7, 1, 1)])
def test_long_documents_are_read_in_windows_that_score_every_token_once(tokenizer, window, stride, texts):
    model = tiny_model("llama", len(tokenizer))
    text = " ".join(TEXTS[:texts])
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    parts = windows(ids[1:], ids[0], window, stride)
    assert sum(scored for _, scored in parts) == len(ids) - 1 and all(len(tokens) <= window + 1 for tokens, _ in parts)
    loss = text_loss(model, tokenizer, [text], window=window, stride=stride, batch_size=3)
    assert loss.nats == pytest.approx(reference_nats(model, ids, window, stride), rel=1e-5)


def test_disjoint_windows_equal_the_harness_rolling_loglikelihood(tokenizer):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = tiny_model("gpt2", len(tokenizer))
    texts = [" ".join(TEXTS[i:i + 3]) for i in range(0, 12, 3)]
    harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=16)
    requests = [Instance("loglikelihood_rolling", {}, (text,), index) for index, text in enumerate(texts)]
    expected = -sum(harness.loglikelihood_rolling(requests, disable_tqdm=True))
    assert text_loss(model, tokenizer, texts, window=16, batch_size=4).nats == pytest.approx(expected, rel=1e-6)


def test_row_loss_skips_padding_and_masked_targets():
    model = tiny_model("gpt2", 50, context=16)
    rows = np.array([[3, 4, 5, 6, 1, 1], [7, 8, 9, 10, 11, 12]])
    # as in token shards, padding has mask 0; where there is a mask it decides (model/loss.py), like training
    masks = np.array([[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 1, 1]])
    loss = row_loss(model, rows, pad_id=1, masks=masks, batch_size=1)
    nats = 0.0
    for row, mask in zip(rows, masks):
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.from_numpy(row[None, :-1])).logits[0], -1)
        nats -= sum(float(logprobs[i, row[i + 1]]) for i in range(5) if mask[i + 1])
    assert loss.tokens == 2 + 4 and loss.nats == pytest.approx(nats, rel=1e-5) and loss.bits_per_byte is None
    unmasked = row_loss(model, rows, pad_id=1, batch_size=1)  # without masks: every id but padding
    assert unmasked.tokens == 3 + 5


def test_the_prefix_token_is_bos_else_eos(tokenizer):
    from transformers import PreTrainedTokenizerFast

    assert prefix_token(tokenizer) == tokenizer.bos_token_id
    eos_only = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    assert prefix_token(eos_only) == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        prefix_token(PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer))


def test_losses_pool_by_summing_nats_tokens_and_bytes():
    pooled = Loss(10.0, 5, 20, 1).add(Loss(30.0, 15, 40, 2))
    assert (pooled.nats, pooled.tokens, pooled.bytes, pooled.documents) == (40.0, 20, 60, 3)
    assert pooled.bits_per_byte == pytest.approx(40 / (math.log(2) * 60))
    assert pooled.perplexity == pytest.approx(math.exp(2.0)) and Loss().perplexity is None
