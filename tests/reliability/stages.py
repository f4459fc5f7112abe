"""Build the data stages of one config without Prefect, the way the flow's tasks do (same specs, same
cores), so a fault test can run a single stage in a subprocess, kill it, and run it again.

    python -m tests.reliability.stages CONFIG STAGE     # build STAGE (its inputs must be committed)

Environment knobs for fault injection in that subprocess:
    FAULT_UPLOAD_DELAY  seconds to sleep before every data-file upload (widens the window in which a
                        kill lands mid-stage, so small inputs suffice)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipeline.artifacts import StageSpec, read_manifest
from pipeline.config import PipelineConfig, load_config
from pipeline.models import file_sha256
from pipeline.sources import list_inputs
from pipeline.storage import ObjectStore, open_store

# The data stages, in DAG order, as artifact names of the single source "web" (dedup and tokenizer are global).
DATA_STAGES = ("ingest/web", "clean/web", "langid/web", "dedup", "filter/web", "tokenizer", "tokens/web")


class NotCommitted(RuntimeError):
    """An input of the stage asked for is not committed."""


def _quiet(_message: str) -> None:
    pass


def plan(config: PipelineConfig, store: ObjectStore, base_dir: Path, upto: str, *, build: set[str] | None = None,
         progress: Callable[[str], None] = _quiet, specs: dict[str, StageSpec] | None = None,
         dry: str | None = None) -> dict[str, dict]:
    """Walk the data stages up to `upto`: read each committed version, build the ones named in `build`
    (None: every missing one). Returns {artifact: manifest}. Every spec goes into `specs`; the artifact
    named by `dry` is neither read nor built."""
    from tasks.clean import clean_spec, run_clean
    from tasks.dedup import dedup_spec, resolve_against, run_dedup
    from tasks.filter import filter_spec, resolve_rule_inputs, run_filter
    from tasks.ingest import ingest_spec, run_ingest
    from tasks.langid import langid_spec, resolve_model_path, run_langid
    from tasks.tokenize import run_tokenize, tokenize_spec
    from tasks.tokenizer import run_tokenizer, tokenizer_spec

    source = config.source("web")
    done: dict[str, dict] = {}

    def step(spec: StageSpec, run: Callable[[], dict]) -> None:
        if specs is not None:
            specs[spec.artifact] = spec
        if spec.artifact == dry:
            return
        manifest = read_manifest(store, spec.artifact, spec.version)
        if manifest is None:
            if build is not None and spec.artifact not in build:
                raise NotCommitted(f"{spec.artifact}@{spec.version} is not committed in {store.uri()}")
            manifest = run()
        done[spec.artifact] = manifest

    for artifact in DATA_STAGES[: DATA_STAGES.index(upto) + 1]:
        if artifact == "ingest/web":
            files = list_inputs(source, config.storage, base_dir=base_dir)
            spec = ingest_spec(source, files, config.ingest)
            step(spec, lambda: run_ingest(source, config.ingest, config.storage, store, spec, files, progress))
        elif artifact == "clean/web":
            spec = clean_spec("web", config.clean, done["ingest/web"])
            step(spec, lambda: run_clean("web", config.clean, store, spec, done["ingest/web"], progress))
        elif artifact == "langid/web":
            digest = file_sha256(resolve_model_path(config.langid))
            spec = langid_spec("web", config.langid, done["clean/web"], digest)
            step(spec, lambda: run_langid("web", config.langid, store, spec, done["clean/web"], progress))
        elif artifact == "dedup":
            inputs = {"web": done["langid/web"]}
            spec = dedup_spec(config.dedup, inputs, resolve_against(store, config.dedup.against))
            step(spec, lambda: run_dedup(config.dedup, store, spec, inputs, progress))
        elif artifact == "filter/web":
            with tempfile.TemporaryDirectory() as scratch:
                rule_inputs = resolve_rule_inputs(config.filter, store, base_dir, Path(scratch))
                spec = filter_spec("web", config.filter, done["dedup"], rule_inputs)
                step(spec, lambda: run_filter("web", config.filter, store, spec, done["dedup"], progress,
                                              rule_inputs))
        elif artifact == "tokenizer":
            inputs = {"web": done["filter/web"]}
            seq_len = config.tokenize.seq_len
            spec = tokenizer_spec(config.tokenizer, inputs, seq_len, None)
            step(spec, lambda: run_tokenizer(config.tokenizer, store, spec, inputs, seq_len, None, progress))
        elif artifact == "tokens/web":
            spec = tokenize_spec("web", config.tokenize, done["filter/web"], done["tokenizer"])
            step(spec, lambda: run_tokenize("web", config.tokenize, store, spec, done["filter/web"],
                                            done["tokenizer"], progress))
    return done


def spec_of(config: PipelineConfig, store: ObjectStore, base_dir: Path, artifact: str) -> StageSpec:
    """The spec (hence the version and prefix) `artifact` is built under; its inputs must be committed."""
    specs: dict[str, StageSpec] = {}
    plan(config, store, base_dir, artifact, build=set(), specs=specs, dry=artifact)
    return specs[artifact]


def _slow_uploads(delay: float) -> None:
    from pipeline.storage import LocalStore, S3Store

    for cls in (S3Store, LocalStore):
        original = cls.put_file

        def put_file(self, key, path, _original=original):  # noqa: ANN001
            time.sleep(delay)
            return _original(self, key, path)

        cls.put_file = put_file


def main(argv: list[str]) -> int:
    config_path, artifact = argv
    if delay := float(os.environ.get("FAULT_UPLOAD_DELAY", "0") or 0):
        _slow_uploads(delay)
    config = load_config(config_path)
    store = open_store(config.storage)
    manifest = plan(config, store, Path(config_path).resolve().parent, artifact, build={artifact},
                    progress=lambda message: print(message, flush=True))[artifact]
    print(f"committed {artifact}@{manifest['version']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def kill_once_parts_appear(process, store: ObjectStore, prefix: str, timeout: float,
                           while_waiting: Callable[[], None] = lambda: None) -> None:
    """SIGKILL the process group of `process` as soon as a finished unit (a parts/ key) shows under
    `prefix`; `while_waiting` runs on every poll (e.g. to assert that nothing is committed yet)."""
    import signal

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        while_waiting()
        if list(store.list(prefix + "/parts/")):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the process ended before it could be killed:\n" + process.stdout.read()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
