"""custom_dataset of the lm-evaluation-harness task YAMLs in this folder
(`custom_dataset: !function jsonl_data.load`): the JSONL files their dataset_kwargs.data_files name,
relative to this folder, read offline."""

from pathlib import Path

from corpus.eval_tasks import jsonl_splits


def load(data_files, **_metadata):
    return jsonl_splits(data_files, Path(__file__).resolve().parent)
