"""Tokenizer stage: a byte-level BPE trained with HF `tokenizers` on a sample of the filtered documents of
every source (or an existing tokenizer.json named in the config), stored as an artifact that
`transformers.PreTrainedTokenizerFast.from_pretrained(dir)` loads.

The special tokens come first in the vocabulary: end-of-text (id 0), padding (id 1), then the chat-role
tokens instructions fine-tuning uses. Text that happens to contain a special token's spelling is
encoded as plain text (`encode_special_tokens`), so a web page cannot inject an end-of-text.

The sample: documents whose id hashes below `sample_fraction`, sources in config order, until
`sample_max_mb` of text. Training is deterministic: the same sample and settings give the same file.

The core (`train_tokenizer`, `run_tokenizer`, `load_tokenizer`) knows nothing of Prefect;
`tokenizer_task` is the thin task.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, sha256_file
from pipeline.config import TokenizerConfig
from pipeline.storage import ObjectStore
from pipeline.units import read_shard, shard_units
from prefect import task
from prefect.cache_policies import NO_CACHE

from .stage import RunContext, execute_stage, upstream_manifest

STAGE = "tokenizer"
CODE_VERSION = "1"
MB = 1024 * 1024


def id_fraction(doc_id: str, salt: str) -> float:
    """A stable number in [0, 1) for a document id (the same on every run and machine)."""
    digest = hashlib.blake2b(f"{salt}\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def sample_texts(store: ObjectStore, inputs: dict[str, dict], settings: TokenizerConfig, scratch: Path,
                 counts: dict) -> Iterator[str]:
    """The training sample, streamed shard by shard."""
    budget = settings.sample_max_mb * MB
    for manifest in inputs.values():
        for unit in shard_units(manifest):
            for batch in read_shard(store, manifest, unit.entry, scratch, columns=["id", "text"]):
                for doc_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if id_fraction(doc_id, "tokenizer-sample") >= settings.sample_fraction:
                        continue
                    size = len(text.encode("utf-8"))
                    if counts["sample_bytes"] + size > budget:
                        return
                    counts["sample_documents"] += 1
                    counts["sample_bytes"] += size
                    yield text


def train_tokenizer(texts: Iterator[str], settings: TokenizerConfig):
    """A byte-level BPE (GPT-2 style: no unknown token, every byte representable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=settings.vocab_size, min_frequency=settings.min_frequency,
                                  special_tokens=settings.special_tokens(), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def check_special_tokens(tokenizer, settings: TokenizerConfig, origin: str) -> None:
    missing = [token for token in settings.special_tokens() if tokenizer.token_to_id(token) is None]
    if missing:
        raise ValueError(f"{origin}: the special tokens {missing} are not in its vocabulary (tokenizer.* settings)")


def save_for_transformers(tokenizer, settings: TokenizerConfig, model_max_length: int, directory: Path) -> None:
    """tokenizer.json plus the config files PreTrainedTokenizerFast.from_pretrained reads."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=settings.eos_token, bos_token=settings.eos_token,
        unk_token=settings.eos_token, pad_token=settings.pad_token,
        extra_special_tokens=list(settings.role_tokens), model_max_length=model_max_length,
    )
    fast.save_pretrained(str(directory))


def tokenizer_spec(settings: TokenizerConfig, inputs: dict[str, dict], seq_len: int, file_sha256: str | None,
                   rebuild: str | None = None) -> StageSpec:
    config = settings.versioned()
    identity: dict[str, Any] = {"model_max_length": seq_len}
    if file_sha256:  # a given tokenizer: its content and the special tokens matter, the corpus does not
        identity["tokenizer_sha256"] = file_sha256
        config = {key: config[key] for key in ("eos_token", "pad_token", "role_tokens")}
    else:
        identity.update({manifest["artifact"]: manifest["version"] for manifest in inputs.values()})
    return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION, config=config, inputs=identity,
                     rebuild=rebuild)


def run_tokenizer(settings: TokenizerConfig, store: ObjectStore, spec: StageSpec, inputs: dict[str, dict],
                  seq_len: int, given: Path | None = None, progress: Callable[[str], None] = print) -> dict:
    """Train (or load `given`) and commit the tokenizer artifact; returns the manifest."""
    from tokenizers import Tokenizer

    started = time.monotonic()
    writer = ArtifactWriter(store, spec)
    counts: dict[str, Any] = {"sample_documents": 0, "sample_bytes": 0}
    with tempfile.TemporaryDirectory(prefix="tokenizer-") as scratch:
        scratch_path = Path(scratch)
        if given is not None:
            tokenizer = Tokenizer.from_file(str(given))
            check_special_tokens(tokenizer, settings, str(given))
            progress(f"tokenizer: using {given} ({tokenizer.get_vocab_size()} tokens)")
        else:
            progress(f"tokenizer: training a {settings.vocab_size}-token byte-level BPE on up to "
                     f"{settings.sample_max_mb} MB of {', '.join(inputs)}")
            tokenizer = train_tokenizer(sample_texts(store, inputs, settings, scratch_path, counts), settings)
            if not counts["sample_documents"]:
                raise ValueError("tokenizer: the sample is empty (no filtered documents, or sample_fraction too low)")
        counts["vocab_size"] = tokenizer.get_vocab_size()
        counts["special_token_ids"] = {token: tokenizer.token_to_id(token) for token in settings.special_tokens()}
        out = scratch_path / "out"
        save_for_transformers(tokenizer, settings, seq_len, out)
        files = [writer.put_file(path.name, path, "tokenizer") for path in sorted(out.iterdir()) if path.is_file()]
    seconds = round(time.monotonic() - started, 3)
    progress(f"tokenizer: {counts['vocab_size']} tokens from {counts['sample_documents']} documents "
             f"({counts['sample_bytes'] / MB:.1f} MB) in {seconds} s")
    return writer.commit(files, counts, summary={"seconds": seconds, "given": str(given) if given else None})


def load_tokenizer(store: ObjectStore, manifest: dict, scratch: Path):
    """The artifact's tokenizer (tokenizers.Tokenizer), special tokens in text encoded as text."""
    from tokenizers import Tokenizer

    [entry] = [entry for entry in files_with_role(manifest, "tokenizer") if entry["path"] == "tokenizer.json"]
    tokenizer = Tokenizer.from_file(str(fetch_verified(store, manifest, entry, scratch)))
    tokenizer.encode_special_tokens = True
    return tokenizer


def tokenizer_json(store: ObjectStore, manifest: dict) -> str:
    """tokenizer.json as a string (what the tokenize workers build their tokenizer from)."""
    with tempfile.TemporaryDirectory() as scratch:
        [entry] = [entry for entry in files_with_role(manifest, "tokenizer") if entry["path"] == "tokenizer.json"]
        return fetch_verified(store, manifest, entry, Path(scratch)).read_text(encoding="utf-8")


def special_ids(manifest: dict) -> dict[str, int]:
    return dict(manifest["counts"]["special_token_ids"])


@task(name="tokenizer", task_run_name="tokenizer", cache_policy=NO_CACHE, persist_result=False)
def tokenizer_task(ctx: RunContext, filter_results: dict[str, dict]) -> Any:
    """Resolve the version from the filtered documents (or the given file) and the config; skip or build."""
    inputs = {source: upstream_manifest(ctx, result) for source, result in filter_results.items()}
    settings = ctx.config.tokenizer
    given = None
    if settings.path:
        given = Path(settings.path) if Path(settings.path).is_absolute() else ctx.base_dir / settings.path
        if not given.is_file():
            raise FileNotFoundError(f"tokenizer.path: {given} does not exist")
    seq_len = ctx.config.tokenize.seq_len
    spec = tokenizer_spec(settings, inputs, seq_len, sha256_file(given) if given else None,
                          rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_tokenizer(settings, ctx.store, spec, inputs, seq_len, given,
                                                               emit))
