"""Fixtures shared by the stage tests: the bundled sample run through the document stages once."""

from __future__ import annotations

import pytest

from model.families import resolve_size
from pipeline.config import JsonlSource, WarcSource
from pipeline.storage import LocalStore
from tests.conftest import SAMPLE
from tests.tasks import chain


@pytest.fixture(scope="session")
def filtered_sample(tmp_path_factory):
    """(store, {source: filter manifest}) for the sample's web and docs sources (no dedup: quicker)."""
    store = LocalStore(tmp_path_factory.mktemp("filtered") / "store", "p")
    sources = [WarcSource(name="web", kind="warc", location=str(SAMPLE / "web")),
               JsonlSource(name="docs", kind="jsonl", location=str(SAMPLE / "jsonl"), id_field="id", url_field="url")]
    inputs = {}
    for source in sources:
        langid = chain.langid(store, source.name, chain.clean(store, source.name, chain.ingest(store, source)))
        inputs[source.name] = chain.filter(store, source.name, langid)
    return store, inputs


# A Llama-style model small enough to train in seconds, with room for IFT's 256-token rows.
PHASE_SIZE = resolve_size("llama-tiny", {"n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "d_ff": 96,
                                         "n_positions": 256})
BAD_CHAT_LINES = [
    "{not json",
    '{"messages": [{"role": "user", "content": "Hi"}]}',
    '{"messages": [{"role": "robot", "content": "Beep"}, {"role": "assistant", "content": "Boop"}]}',
    '{"messages": [{"role": "user", "content": "' + "long question " * 200 + '"}, '
    '{"role": "assistant", "content": "Too long to fit one row."}]}',
]


@pytest.fixture(scope="session")
def model_phases(filtered_sample, tmp_path_factory):
    """The sample through pretrain (web: general), cpt (docs: domain, with replay of web) and ift (the
    sample chat set plus a file of bad lines): a namespace of the manifests and settings."""
    from types import SimpleNamespace

    from pipeline.config import CptConfig, IftConfig, MixtureConfig, TokenizeConfig, TrainConfig
    from tasks.checkpoints import artifact_model
    from tasks.cpt import cpt_spec, run_cpt
    from tasks.ift import ift_spec, run_ift
    from tasks.mixture import mixture_spec, run_mixture
    from tasks.pretrain import pretrain_spec, run_pretrain

    store, filters = filtered_sample
    quiet = lambda _m: None  # noqa: E731
    tokenizer = chain.tokenizer(store, filters)
    tokens = {s: chain.tokenize(store, s, filters[s], tokenizer, TokenizeConfig(workers=1, seq_len=64, val_fraction=0.2))
              for s in filters}
    mixture_settings = MixtureConfig(weights={"web": 1.0}, budget_tokens=40_000)
    spec = mixture_spec(mixture_settings, {"web": tokens["web"]}, PHASE_SIZE)
    mixture = chain.committed(store, spec) or run_mixture(mixture_settings, store, spec, {"web": tokens["web"]},
                                                          PHASE_SIZE, progress=quiet)
    train = TrainConfig(micro_batch=4, warmup_steps=2, checkpoint_every=1000, zero_stage=1, lr=3e-3)
    spec = pretrain_spec(train, PHASE_SIZE, mixture, tokenizer)
    pretrain = chain.committed(store, spec) or run_pretrain(train, PHASE_SIZE, store, spec, mixture, tokenizer, quiet,
                                                            validation=[tokens["web"]])
    cpt_settings = CptConfig(enabled=True, budget_tokens=60_000, lr=3e-3, warmup_steps=2, replay_fraction=0.2)
    start = artifact_model(pretrain)
    domain, general = {"docs": tokens["docs"]}, {"web": tokens["web"]}
    spec = cpt_spec(cpt_settings, train, mixture_settings, start, {**domain, **general}, tokenizer)
    cpt = chain.committed(store, spec) or run_cpt(cpt_settings, train, mixture_settings, store, spec, start, domain,
                                                  general, tokenizer, quiet)
    chat_dir = tmp_path_factory.mktemp("chat")
    (chat_dir / "bad.jsonl").write_text("\n".join(BAD_CHAT_LINES) + "\n")
    chat_files = [SAMPLE / "chat" / "debian_chat.jsonl", chat_dir / "bad.jsonl"]
    ift_settings = IftConfig(enabled=True, chat_files=["unused"], epochs=2, lr=2e-3, warmup_steps=2)
    cpt_start = artifact_model(cpt)
    spec = ift_spec(ift_settings, train, 256, cpt_start, tokenizer, chat_files)
    ift = chain.committed(store, spec) or run_ift(ift_settings, train, 256, store, spec, cpt_start, tokenizer,
                                                  chat_files, quiet)
    return SimpleNamespace(store=store, tokenizer=tokenizer, tokens=tokens, filters=filters, pretrain=pretrain,
                           cpt=cpt, ift=ift, train=train, chat_files=chat_files, cpt_start=cpt_start)
