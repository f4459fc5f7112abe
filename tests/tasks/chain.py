"""Run the per-source stage cores (no Prefect) into a store, for the stage tests."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import CleanConfig, FilterConfig, IngestConfig, LangidConfig, StorageConfig
from pipeline.sources import list_inputs
from tasks.clean import clean_spec, run_clean
from tasks.filter import filter_spec, run_filter
from tasks.ingest import ingest_spec, run_ingest
from tasks.langid import langid_spec, resolve_model_path, run_langid
from pipeline.models import file_sha256



def ingest(store, source, ingest_cfg: IngestConfig | None = None) -> dict:
    ingest_cfg = ingest_cfg or IngestConfig(workers=1)
    storage = StorageConfig(backend="local")
    files = list_inputs(source, storage)
    spec = ingest_spec(source, files, ingest_cfg)
    return run_ingest(source, ingest_cfg, storage, store, spec, files, progress=lambda _m: None)


def clean(store, source_name: str, upstream: dict, settings: CleanConfig | None = None) -> dict:
    settings = settings or CleanConfig(workers=1)
    spec = clean_spec(source_name, settings, upstream)
    return run_clean(source_name, settings, store, spec, upstream, progress=lambda _m: None)


def langid(store, source_name: str, upstream: dict, settings: LangidConfig | None = None) -> dict:
    settings = settings or LangidConfig(workers=1)
    spec = langid_spec(source_name, settings, upstream, file_sha256(resolve_model_path(settings)))
    return run_langid(source_name, settings, store, spec, upstream, progress=lambda _m: None)


def filter(store, source_name: str, upstream: dict, settings: FilterConfig | None = None) -> dict:  # noqa: A001
    settings = settings or FilterConfig(workers=1)
    spec = filter_spec(source_name, settings, upstream)
    return run_filter(source_name, settings, store, spec, upstream, progress=lambda _m: None)


def read_rows(store, manifest: dict, role: str = "documents", tmp: Path | None = None) -> list[dict]:
    import tempfile

    import pyarrow.parquet as pq

    from pipeline.artifacts import fetch_verified, files_with_role

    rows = []
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        for entry in files_with_role(manifest, role):
            rows += pq.read_table(fetch_verified(store, manifest, entry, Path(scratch))).to_pylist()
    return rows


def tokenizer(store, inputs: dict, settings=None, seq_len: int = 64) -> dict:
    from pipeline.config import TokenizerConfig
    from tasks.tokenizer import run_tokenizer, tokenizer_spec

    settings = settings or TokenizerConfig(vocab_size=2048)
    spec = tokenizer_spec(settings, inputs, seq_len, None)
    return committed(store, spec) or run_tokenizer(settings, store, spec, inputs, seq_len, progress=lambda _m: None)


def tokenize(store, source_name: str, upstream: dict, tokenizer_manifest: dict, settings=None) -> dict:
    from pipeline.config import TokenizeConfig
    from tasks.tokenize import run_tokenize, tokenize_spec

    settings = settings or TokenizeConfig(workers=1, seq_len=64)
    spec = tokenize_spec(source_name, settings, upstream, tokenizer_manifest)
    return committed(store, spec) or run_tokenize(source_name, settings, store, spec, upstream, tokenizer_manifest,
                                                  progress=lambda _m: None)


def committed(store, spec) -> dict | None:
    """The manifest if another test already built this version in a shared store (as the flow skips it)."""
    from pipeline.artifacts import read_manifest

    return read_manifest(store, spec.artifact, spec.version)


def hf_directory(store, manifest: dict, directory: Path) -> Path:
    """A model artifact's hf/ files downloaded (verified) into `directory`."""
    from tasks.checkpoints import fetch_hf_dir

    return fetch_hf_dir(store, manifest, directory)


def held_out_loss(store, model: dict | Path, rows_manifest: dict, tmp_path: Path) -> dict:
    """Loss and perplexity of a model (an artifact's hf/ directory, or a checkpoint directory) on the first 64
    held-out rows of a tokens or IFT artifact, over the targets training scores — the eval stage's functions."""
    from model.checkpoint import load_model
    from model.scoring import row_loss
    from tasks.evaluate import val_rows

    directory = model if isinstance(model, Path) else hf_directory(store, model, tmp_path / "model" / model["version"])
    rows, masks = val_rows(store, rows_manifest, 64, tmp_path)
    loss = row_loss(load_model(directory).eval(), rows, rows_manifest["summary"]["pad_id"], masks)
    return {"perplexity": loss.perplexity, "loss": loss.loss, "tokens": loss.tokens}
