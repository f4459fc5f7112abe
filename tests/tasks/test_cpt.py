"""Continued pretraining: the domain/replay mixture with replay as an upper bound, the starting model (the pretrain
artifact, or a user's checkpoint of the Llama, Qwen2, Mistral or GPT-2 family with its own tokenizer), and the
target — CPT lowers domain held-out perplexity relative to the base, and the export loads with the Auto classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ConfigError, CptConfig, MixtureConfig, StorageConfig, TokenizeConfig, TrainConfig
from tasks.checkpoints import StartingModel, checkpoint_model
from tasks.cpt import check_fits, cpt_spec, cpt_weights, replay_bounded, run_cpt
from tasks.tokenizer import import_checkpoint_tokenizer, tokenizer_spec
from tests.checkpoints import make_checkpoint
from tests.tasks import chain

FAMILIES = ("llama", "qwen2", "mistral", "gpt2")


def test_cpt_lowers_domain_perplexity_relative_to_the_base(model_phases, tmp_path):
    phases = model_phases
    base = chain.held_out_loss(phases.store, phases.pretrain, phases.tokens["docs"], tmp_path)["perplexity"]
    after = chain.held_out_loss(phases.store, phases.cpt, phases.tokens["docs"], tmp_path)["perplexity"]
    assert after < base * 0.95, (base, after)
    cpt = phases.cpt
    assert cpt["summary"]["init"] == f"pretrain@{phases.pretrain['version']}"
    roles = {row["source"]: row["role"] for row in cpt["summary"]["table"]}
    assert roles == {"docs": "domain", "web": "replay"}
    replay = cpt["counts"]["replay_sequences"] / (cpt["counts"]["replay_sequences"] + cpt["counts"]["domain_sequences"])
    assert replay <= 0.2 + 0.01
    assert {"hf", "order", "metrics", "plot"} <= {entry["role"] for entry in cpt["files"]}
    [metrics] = [e for e in cpt["files"] if e["role"] == "metrics"]
    from pipeline.artifacts import fetch_verified

    lrs = [json.loads(line)["lr"] for line in fetch_verified(phases.store, cpt, metrics, tmp_path).read_text().splitlines()]
    assert lrs[0] < lrs[1] <= max(lrs) == pytest.approx(3e-3) and lrs[-1] < lrs[2]  # re-warmed, then decayed


def test_cpt_weights_split_domain_by_size_and_replay_by_mixture_weight():
    weights = cpt_weights({"a": 300, "b": 100}, {"web": 0.75, "wiki": 0.25}, replay=0.2)
    assert weights == pytest.approx({"a": 0.6, "b": 0.2, "web": 0.15, "wiki": 0.05})
    with pytest.raises(ValueError, match="no training tokens"):
        cpt_weights({"a": 0}, {}, 0.0)


def test_replay_fraction_is_an_upper_bound():
    # the domain source was capped at 7 x 4 epochs = 28 sequences; the allocation gave the rest to replay
    allocation = {"docs": 28, "web": 1_500, "pages": 35}
    bounded = replay_bounded(allocation, ["docs"], 0.2)
    assert bounded["docs"] == 28 and bounded["web"] + bounded["pages"] == 7  # 20 % of 35 sequences
    assert bounded["web"] > bounded["pages"]  # in proportion to what each had
    assert replay_bounded({"docs": 80, "web": 20}, ["docs"], 0.2) == {"docs": 80, "web": 20}  # within the bound
    assert replay_bounded({"docs": 5, "web": 9}, ["docs"], 0.0) == {"docs": 5, "web": 0}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-checkpoints")
    return {family: make_checkpoint(family, root / family) for family in FAMILIES}


def checkpoint_phase(phases, directory: Path, family: str) -> tuple[StartingModel, dict, dict]:
    """(the starting model, its tokenizer artifact, the sample's tokens with it) for a user checkpoint."""
    start = checkpoint_model(str(directory), "cpt.init", directory.parent, StorageConfig(backend="local"), 64)
    files = {name: sha for name, sha in start.checkpoint.files.items() if name.startswith(("tokenizer", "special",
                                                                                          "chat_template"))}
    spec = tokenizer_spec(None, {}, 64, None, checkpoint=files)
    tokenizer = chain.committed(phases.store, spec) or import_checkpoint_tokenizer(phases.store, spec, directory,
                                                                                   lambda _m: None)
    tokens = {s: chain.tokenize(phases.store, s, phases.filters[s], tokenizer,
                                TokenizeConfig(workers=1, seq_len=64, val_fraction=0.2)) for s in ("docs", "web")}
    return start, tokenizer, tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_cpt_from_a_user_checkpoint_of_each_family(model_phases, checkpoints, family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    phases = model_phases
    start, tokenizer, tokens = checkpoint_phase(phases, checkpoints[family], family)
    assert start.identity.startswith("sha256:") and start.config["model_type"] == family
    settings = CptConfig(enabled=True, init=str(checkpoints[family]), budget_tokens=12_000, lr=3e-3,
                         warmup_steps=1)
    train = TrainConfig(micro_batch=4, checkpoint_every=1000, zero_stage=1)
    domain, general = {"docs": tokens["docs"]}, {"web": tokens["web"]}
    mixture = MixtureConfig(weights={"web": 1.0})
    spec = cpt_spec(settings, train, mixture, start, {**domain, **general}, tokenizer)
    manifest = chain.committed(phases.store, spec) or run_cpt(settings, train, mixture, phases.store, spec, start,
                                                              domain, general, tokenizer, lambda _m: None)
    assert manifest["summary"]["init"] == str(checkpoints[family])
    assert manifest["summary"]["init_lineage"]["files"] == start.checkpoint.files
    base = chain.held_out_loss(phases.store, checkpoints[family], tokens["docs"], tmp_path)["loss"]
    after = chain.held_out_loss(phases.store, manifest, tokens["docs"], tmp_path)["loss"]
    assert after < base - 0.5, (base, after)
    hf = chain.hf_directory(phases.store, manifest, tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(str(hf))
    assert model.config.model_type == family and model.config.vocab_size == start.config["vocab_size"]
    ours, theirs = AutoTokenizer.from_pretrained(str(hf)), AutoTokenizer.from_pretrained(str(checkpoints[family]))
    assert ours("Debian packages")["input_ids"] == theirs("Debian packages")["input_ids"]


def test_the_checkpoint_tokenizer_tokenizes_the_cpt_data(model_phases, checkpoints):
    """The token ids are the checkpoint tokenizer's (as AutoTokenizer gives them, BOS included), end-of-text
    after each document, and the pipeline's own tokens are not reused."""
    from transformers import AutoTokenizer

    from corpus.token_shards import read_tokens, sequences
    from pipeline.artifacts import fetch_verified, files_with_role
    from tasks.tokenize import split_of

    phases = model_phases
    _, tokenizer, tokens = checkpoint_phase(phases, checkpoints["llama"], "llama")
    assert tokens["docs"]["version"] != phases.tokens["docs"]["version"]
    assert tokens["docs"]["summary"]["vocab_size"] == tokenizer["summary"]["conventions"]["vocab_size"]
    hf = AutoTokenizer.from_pretrained(str(checkpoints["llama"]))
    documents = chain.read_rows(phases.store, phases.filters["docs"])
    first = next(doc for doc in documents if split_of(doc["id"], 0.2) == "train")
    expected = hf(first["text"])["input_ids"] + [hf.eos_token_id]
    assert expected[0] == hf.bos_token_id
    entry = sorted((e for e in files_with_role(tokens["docs"], "tokens") if e["split"] == "train"),
                   key=lambda e: e["path"])[0]
    with __import__("tempfile").TemporaryDirectory() as scratch:
        rows = sequences(read_tokens(fetch_verified(phases.store, tokens["docs"], entry, Path(scratch))))
        stream = rows.reshape(-1)[:len(expected)].tolist()
    assert stream == expected
    # the llama tokenizer pads with its end-of-text token: the shards carry a loss mask
    assert tokenizer["summary"]["conventions"]["pad_is_eos"]


def test_unusable_checkpoints_are_refused_before_any_work(checkpoints, tmp_path):
    import shutil

    with pytest.raises(ConfigError, match=r"^cpt.init: .*context is 512 positions, shorter than tokenize.seq_len 1024"):
        checkpoint_model(str(checkpoints["qwen2"]), "cpt.init", tmp_path, StorageConfig(backend="local"), 1024)
    copy = shutil.copytree(checkpoints["gpt2"], tmp_path / "bin")
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="cpt.init: .*not safetensors"):
        checkpoint_model(str(copy), "cpt.init", tmp_path, StorageConfig(backend="local"), 64)
    with pytest.raises(ConfigError, match="ift.init: .*no such directory"):
        checkpoint_model("missing/dir", "ift.init", tmp_path, StorageConfig(backend="local"), 64)


def test_a_model_that_does_not_fit_the_tokenizer_or_sequences(model_phases):
    config = {"model_type": "llama", "vocab_size": 1000, "max_position_embeddings": 32}
    with pytest.raises(ValueError, match="tokenizer has 2048 ids"):
        check_fits(config, model_phases.tokenizer, 16, "cpt.init")
    with pytest.raises(ValueError, match="exceeds the model's context of 32 positions"):
        check_fits({**config, "vocab_size": 4096}, model_phases.tokenizer, 64, "cpt.init")
