"""What the training stages share (tasks/training.py), against a real SeaweedFS: checkpoints are uploaded while
training goes on (the first one is held in flight until the stage has read a later step from the trainer — an
upload in the log loop could never finish — and lands in the store before the run ends), the trainer streams its
shards with the store's credentials from the environment only (never in the run spec), and a retry with another
world size refuses the stored checkpoint naming both sizes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pipeline.config import TrainConfig
from pipeline.storage import join_key
from tasks.training import CheckpointSync, TrainingJob, run_training
from tests.model.test_streaming import streamed_data
from tests.model.test_train import LLAMA, learnable_data

PREFIX = "artifacts/pretrain/test"
SETTINGS = TrainConfig(steps=6, micro_batch=4, grad_accum=2, warmup_steps=2, lr=3e-3, min_lr=3e-4, zero_stage=1,
                       checkpoint_every=2, keep_checkpoints=0, eval_every=3, threads_per_process=1, log_every=1)


class HeldFirstCheckpoint:
    """The real store; an upload of the first checkpoint's files waits until `release` is set."""

    def __init__(self, store, release: threading.Event, events: list[str]):
        self.store, self.release, self.events = store, release, events

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put_file(self, key: str, path: Path) -> None:
        if "/checkpoints/step0000002/" in key:
            if not self.release.wait(timeout=180):
                raise AssertionError("the stage read no later step while the first checkpoint was uploading")
            self.events.append("step0000002 file stored")
        self.store.put_file(key, path)


@pytest.fixture(scope="module")
def trained(seaweed, tmp_path_factory):
    from tests.conftest import new_s3_store

    store = new_s3_store(seaweed)
    work = tmp_path_factory.mktemp("train")
    data = streamed_data(store, learnable_data(work / "tokens"), work / "run" / "cache", 10 ** 9)
    (work / "run").mkdir(exist_ok=True)
    release, events, messages = threading.Event(), [], []

    def progress(message: str) -> None:
        messages.append(message)
        if " step 5/6 " in message:
            events.append("step 5 read")
            release.set()

    job = TrainingJob("pretrain", SETTINGS, LLAMA, SETTINGS.steps, data)
    metrics, sync = run_training(job, HeldFirstCheckpoint(store, release, events), PREFIX, work / "run", progress)
    return store, data, work, metrics, sync, events, messages


def test_checkpoints_upload_while_the_next_steps_run(trained):
    store, _data, work, metrics, sync, events, messages = trained
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert events[0] == "step 5 read" and "step0000002 file stored" in events
    for tag in ("step0000002", "step0000004", "step0000006"):
        assert any(key.endswith("client_state.pt") for key in store.list(join_key(PREFIX, "checkpoints", tag) + "/"))
        assert f"pretrain: checkpoint {tag} stored" in messages
    assert store.get_bytes(join_key(PREFIX, "checkpoints", "latest")).decode() == "step0000006"
    assert not list((work / "run" / "outbox").iterdir())  # every snapshot sent and removed
    # a retry on another machine downloads the latest checkpoint
    fresh = CheckpointSync(store, PREFIX, work / "fresh")
    assert fresh.restore() == "step0000006" and (work / "fresh" / "step0000006" / "client_state.pt").is_file()


def test_the_run_spec_names_the_store_but_holds_no_credentials(trained):
    store, data, work, *_ = trained
    text = (work / "run" / "spec.json").read_text()
    assert store.bucket in text and data["stream"]["shards"][0]["key"] in text
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert os.environ[name] not in text


def test_a_retry_with_another_world_size_refuses_naming_both(trained):
    store, data, work, *_ = trained
    wider = SETTINGS.model_copy(update={"processes": 2, "launcher": "torchrun", "micro_batch": 4, "steps": 8})
    job = TrainingJob("pretrain", wider, LLAMA, 8, data)
    (work / "retry").mkdir()
    with pytest.raises(RuntimeError, match=r"pretrain: checkpoint step0000006 was written with world size 1 "
                                           r"\(micro-batch 4, accumulation 2\); this run has world size 2 "
                                           r"\(micro-batch 4, accumulation 2\)"):
        run_training(job, store, PREFIX, work / "retry", lambda _message: None)
