"""The models the eval stage compares, each seen only as a Hugging Face directory that transformers'
AutoModelForCausalLM and AutoTokenizer load — whatever family trained it, whatever its tokenizer.

A model is either a model artifact (pretrain, cpt, ift: its files with role `hf` form the directory)
or a checkpoint directory on disk (`cpt.init: <dir>`: the directory itself, or its `hf/` folder if it
is a downloaded model artifact). `hf_directory` gives the local directory for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts import fetch_verified, files_with_role, sha256_file
from pipeline.storage import ObjectStore


@dataclass(frozen=True)
class EvalModel:
    name: str                   # e.g. cpt@<version>, or the checkpoint directory
    identity: str               # what the eval version depends on: the artifact version or the files' sha256
    manifest: dict | None = None
    directory: Path | None = None


def artifact_model(manifest: dict) -> EvalModel:
    return EvalModel(f"{manifest['artifact']}@{manifest['version']}", manifest["version"], manifest=manifest)


def directory_model(directory: Path) -> EvalModel:
    """A checkpoint directory (config.json with weights and tokenizer files), or a folder holding one as hf/."""
    directory = Path(directory)
    if not (directory / "config.json").is_file() and (directory / "hf" / "config.json").is_file():
        directory = directory / "hf"
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory}: not a Hugging Face model directory (no config.json)")
    files = sorted(path for path in directory.iterdir() if path.is_file())
    identity = ",".join(f"{path.name}:{sha256_file(path)}" for path in files)
    return EvalModel(str(directory), identity, directory=directory)


def hf_directory(store: ObjectStore, model: EvalModel, work: Path) -> Path:
    """A local directory that AutoModelForCausalLM / AutoTokenizer load: an artifact's hf/ files downloaded
    (and verified) into `work`, or the checkpoint directory itself."""
    if model.manifest is None:
        return model.directory
    entries = list(files_with_role(model.manifest, "hf"))
    if not entries:
        raise ValueError(f"{model.name}: the artifact has no hf/ files (role hf) to load with transformers")
    directory = work / model.name.replace("/", "_").replace("@", "-")
    directory.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = directory / Path(entry["path"]).name
        if not target.exists():
            fetch_verified(store, model.manifest, entry, work).rename(target)
    return directory
