"""Tokenizer stage: a byte-level BPE trained with HF `tokenizers` on a sample of the filtered documents of
every source (or an existing tokenizer.json named in the config), stored as an artifact that
`transformers.AutoTokenizer.from_pretrained(dir)` loads (transformers 4.x and 5.x). When the model phases
start from a user's checkpoint (cpt.init / ift.init), the artifact is instead that checkpoint's own
tokenizer, so the data of those phases is tokenized as the model was trained to read it.

The special tokens come first in the vocabulary: end-of-text (id 0), padding (id 1), then the chat-role
tokens instructions fine-tuning uses. Text that happens to contain a special token's spelling is
encoded as plain text (`encode_special_tokens`), so a web page cannot inject an end-of-text.

The sample: documents whose id hashes below `sample_fraction`, sources in config order, until
`sample_max_mb` of text. Training is deterministic: the same sample and settings give the same file.

Every tokenizer artifact records its conventions (summary.conventions): the end-of-text, padding and
beginning-of-text ids, whether the tokenizer adds a BOS itself, whether it pads with its end-of-text
token (then token shards carry a loss mask, so padding is never confused with a real end of text), its
vocabulary and whether it has a chat template. Consumers read them through `conventions()`.

The core (`train_tokenizer`, `run_tokenizer`, `import_checkpoint_tokenizer`, `load_tokenizer`) knows
nothing of Prefect; `tokenizer_task` is the thin task.
"""

from __future__ import annotations

import hashlib
import importlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.artifacts import ArtifactWriter, StageSpec, fetch_verified, files_with_role, sha256_file
from pipeline.config import TokenizerConfig
from pipeline.storage import ObjectStore
from pipeline.units import read_shard, shard_units

from .stage import RunContext, execute_stage, stage_task, upstream_manifest

STAGE = "tokenizer"
CODE_VERSION = "2"  # 2: tokenizer_class loadable by transformers 4.x, conventions in the summary
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
    """tokenizer.json plus the config files AutoTokenizer.from_pretrained reads, in transformers 4.x and 5.x
    (5.x writes its own class name, TokenizersBackend, and a list of extra_special_tokens, neither of which 4.x
    reads: the shared spellings are PreTrainedTokenizerFast and additional_special_tokens)."""
    import json

    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=settings.eos_token, bos_token=settings.eos_token,
        unk_token=settings.eos_token, pad_token=settings.pad_token,
        extra_special_tokens=list(settings.role_tokens), model_max_length=model_max_length,
    )
    fast.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # 4.x reads a list only as additional_special_tokens (its extra_special_tokens is a dict); 5.x converts it.
    config.pop("extra_special_tokens", None)
    config["additional_special_tokens"] = list(settings.role_tokens)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def trained_conventions(tokenizer, settings: TokenizerConfig) -> dict[str, Any]:
    eos, pad = tokenizer.token_to_id(settings.eos_token), tokenizer.token_to_id(settings.pad_token)
    return {"eos_id": eos, "pad_id": pad, "bos_id": None, "adds_bos": False, "pad_is_eos": False,
            "vocab_size": tokenizer.get_vocab_size(), "end_of_turn_id": tokenizer.token_to_id(settings.role_tokens[-1]),
            "chat_template": False, "origin": "trained"}


def checkpoint_conventions(directory: Path) -> tuple[dict[str, Any], str]:
    """(conventions, the encoder as AutoTokenizer configures it) of a checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    from model.checkpoint import read_chat_template

    hf = AutoTokenizer.from_pretrained(str(directory))
    if hf.eos_token_id is None:
        raise ValueError(f"{directory}: the tokenizer has no end-of-text (eos) token; set eos_token in its "
                         f"tokenizer_config.json")
    backend = hf.backend_tokenizer
    probe = backend.encode("a", add_special_tokens=True).ids
    adds_bos = hf.bos_token_id is not None and bool(probe) and probe[0] == hf.bos_token_id
    pad = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
    vocab_size = max(backend.get_vocab_size(with_added_tokens=True), max(backend.get_vocab(True).values()) + 1)
    return ({"eos_id": hf.eos_token_id, "pad_id": pad, "bos_id": hf.bos_token_id, "adds_bos": adds_bos,
             "pad_is_eos": pad == hf.eos_token_id, "vocab_size": vocab_size, "end_of_turn_id": None,
             "chat_template": read_chat_template(directory) is not None, "origin": f"checkpoint:{directory}"},
            backend.to_str())


def conventions(manifest: dict) -> dict[str, Any]:
    """A tokenizer artifact's ids and habits (see the module docstring)."""
    return dict(manifest["summary"]["conventions"])


def tokenizer_spec(settings: TokenizerConfig | None, inputs: dict[str, dict], seq_len: int, file_sha256: str | None,
                   rebuild: str | None = None, checkpoint: dict[str, str] | None = None) -> StageSpec:
    identity: dict[str, Any] = {"model_max_length": seq_len}
    if checkpoint is not None:  # a checkpoint's own tokenizer: its files are all that matter
        return StageSpec(stage=STAGE, artifact=STAGE, code_version=CODE_VERSION, config={},
                         inputs={**identity, "checkpoint_tokenizer": checkpoint}, rebuild=rebuild)
    config = settings.versioned()
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
            # Saving needs transformers, whose import (~0.5 CPU-second) would otherwise follow the training:
            # it runs meanwhile, while the training's Rust threads do not hold the GIL.
            importer = threading.Thread(target=importlib.import_module, args=("transformers",), daemon=True)
            importer.start()
            tokenizer = train_tokenizer(sample_texts(store, inputs, settings, scratch_path, counts), settings)
            importer.join()
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
    return writer.commit(files, counts, summary={"seconds": seconds, "given": str(given) if given else None,
                                                 "conventions": trained_conventions(tokenizer, settings)})


def import_checkpoint_tokenizer(store: ObjectStore, spec: StageSpec, directory: Path,
                                progress: Callable[[str], None] = print) -> dict:
    """Commit a checkpoint's own tokenizer files as the artifact, with its conventions and the encoder the
    tokenize workers use (encoder.json: the backend tokenizer as AutoTokenizer configures it, BOS included)."""
    from model.checkpoint import TOKENIZER_FILES

    writer = ArtifactWriter(store, spec)
    found, encoder = checkpoint_conventions(directory)
    with tempfile.TemporaryDirectory(prefix="tokenizer-") as scratch:
        encoder_path = Path(scratch) / "encoder.json"
        encoder_path.write_text(encoder, encoding="utf-8")
        files = [writer.put_file(name, directory / name, "tokenizer") for name in TOKENIZER_FILES
                 if (directory / name).is_file()]
        files.append(writer.put_file("encoder.json", encoder_path, "encoder"))
    counts = {"vocab_size": found["vocab_size"]}
    progress(f"tokenizer: the checkpoint's own ({found['vocab_size']} ids, eos {found['eos_id']}, "
             f"{'adds BOS ' + str(found['bos_id']) if found['adds_bos'] else 'no BOS'}, "
             f"{'pads with eos' if found['pad_is_eos'] else 'pad ' + str(found['pad_id'])}) from {directory}")
    return writer.commit(files, counts, summary={"conventions": found, "checkpoint": str(directory)})


def load_tokenizer(store: ObjectStore, manifest: dict, scratch: Path):
    """The artifact's tokenizer (tokenizers.Tokenizer), special tokens in text encoded as text."""
    from tokenizers import Tokenizer

    [entry] = [entry for entry in files_with_role(manifest, "tokenizer") if entry["path"] == "tokenizer.json"]
    tokenizer = Tokenizer.from_file(str(fetch_verified(store, manifest, entry, scratch)))
    tokenizer.encode_special_tokens = True
    return tokenizer


def tokenizer_json(store: ObjectStore, manifest: dict) -> str:
    """The encoder as a JSON string (what the tokenize workers build their tokenizer from): a checkpoint's
    encoder.json, else tokenizer.json."""
    with tempfile.TemporaryDirectory() as scratch:
        entries = {entry["path"]: entry for entry in manifest["files"]}
        entry = entries.get("encoder.json") or entries["tokenizer.json"]
        return fetch_verified(store, manifest, entry, Path(scratch)).read_text(encoding="utf-8")


@stage_task("tokenizer", "tokenizer")
def tokenizer_task(ctx: RunContext, filter_results: dict[str, dict]) -> Any:
    """Resolve the version from the filtered documents (or the given file) and the config; skip or build."""
    inputs = {source: upstream_manifest(ctx, result) for source, result in filter_results.items()}
    settings = ctx.config.tokenizer
    seq_len = ctx.config.tokenize.seq_len
    from model.checkpoint import TOKENIZER_FILES

    from .checkpoints import check_base_checkpoint

    base = check_base_checkpoint(ctx.config, ctx.base_dir)
    if base is not None:  # the model phases start from the user's checkpoint: its tokenizer, not ours
        names = {name: sha for name, sha in base.checkpoint.files.items() if name in TOKENIZER_FILES}
        spec = tokenizer_spec(settings, inputs, seq_len, None, rebuild=ctx.rebuild_token(STAGE), checkpoint=names)
        return execute_stage(ctx, spec, lambda emit: import_checkpoint_tokenizer(ctx.store, spec,
                                                                                 base.checkpoint.directory, emit))
    given = None
    if settings.path:
        given = Path(settings.path) if Path(settings.path).is_absolute() else ctx.base_dir / settings.path
        if not given.is_file():
            raise FileNotFoundError(f"tokenizer.path: {given} does not exist")
    spec = tokenizer_spec(settings, inputs, seq_len, sha256_file(given) if given else None,
                          rebuild=ctx.rebuild_token(STAGE))
    return execute_stage(ctx, spec, lambda emit: run_tokenizer(settings, ctx.store, spec, inputs, seq_len, given,
                                                               emit))
