"""tasks/remote.py and flows/train.py without a stack: what a training flow run is given, how a failed one is
reported, that the pool settings stay out of versions, and that the global concurrency limit (on Prefect's
test server) lets one training run hold the slot at a time."""

from __future__ import annotations

import threading

import pytest

from pipeline.config import ConcurrencyLimitConfig, ConfigError, load_config
from tasks.pretrain import pretrain_spec
from tasks.remote import concurrency_slot, failure_reason, reference
from tests.conftest import REPO


def test_inputs_travel_as_artifact_references():
    result = {"stage": "mixture", "artifact": "mixture", "version": "v1", "uri": "s3://b/p", "status": "cached",
              "counts": {"sequences": 9}}
    inputs = {"mixture_result": result, "tokens_results": {"web": {**result, "artifact": "tokens/web"}},
              "base_result": None}
    assert reference(inputs) == {"mixture_result": {"artifact": "mixture", "version": "v1"},
                                 "tokens_results": {"web": {"artifact": "tokens/web", "version": "v1"}},
                                 "base_result": None}


def test_a_failed_training_run_is_one_line():
    message = "Flow run encountered an exception: RuntimeError: pretrain: training failed (exit 1); last output:\nx\ny"
    assert failure_reason("pretrain", "bold-fox-pretrain", "k8s-gpu", "Failed", message) == \
        "pretrain: training flow run bold-fox-pretrain on work pool k8s-gpu ended Failed: RuntimeError: pretrain: " \
        "training failed (exit 1); last output:"
    assert failure_reason("cpt", "r-cpt", "local-gpu", "Crashed", None).endswith("ended Crashed: no message")


def test_where_training_runs_is_not_in_the_version():
    plain = load_config(REPO / "pipeline.yaml")
    pooled = load_config(REPO / "pipeline.yaml", {"train.work_pool": "k8s-gpu", "train.work_queue": "h100",
                                                  "train.job_variables": {"gpus": 8},
                                                  "train.concurrency_limit": {"name": "h100", "slots": 4}})
    assert pooled.train.versioned() == plain.train.versioned()
    mixture, tokenizer = {"version": "m"}, {"version": "t"}
    size = plain.model.size()
    assert pretrain_spec(pooled.train, size, mixture, tokenizer).version == \
        pretrain_spec(plain.train, size, mixture, tokenizer).version
    assert pooled.cpt.train_settings(pooled.train).work_pool == "k8s-gpu"


def test_pool_settings_without_a_pool_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"train: job_variables applies to training on a work pool"):
        load_config(REPO / "pipeline.yaml", {"train.job_variables": {"gpus": 8}})
    with pytest.raises(ConfigError, match=r"train\.concurrency_limit\.slots"):
        load_config(REPO / "pipeline.yaml", {"train.concurrency_limit.slots": 0})


def test_the_train_flow_refuses_a_stage_that_does_not_train():
    from flows.train import train

    with pytest.raises(ConfigError, match=r"parameter stage: 'eval' is not a training stage; allowed: "
                                          r"\['cpt', 'ift', 'pretrain'\]"):
        train.fn(stage="eval", inputs={}, version="v", run_id="r")


@pytest.mark.usefixtures("prefect_harness")
def test_the_concurrency_limit_holds_one_training_run_at_a_time():
    from prefect import get_client

    with pytest.raises(RuntimeError, match=r"train\.concurrency_limit\.name: the Prefect server has no global "
                                           r"concurrency limit 'absent'; create it"):
        concurrency_slot(ConcurrencyLimitConfig(name="absent"), print)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name("gpu-test", 1)
    events: list[str] = []
    first_holds, second_started = threading.Event(), threading.Event()

    def first():
        with concurrency_slot(ConcurrencyLimitConfig(name="gpu-test"), lambda _m: None):
            events.append("first in")
            first_holds.set()
            second_started.wait(30)
            # the second run asked for the slot; give it every chance to take it wrongly
            for _ in range(30):
                threading.Event().wait(0.1)
            events.append("first out")

    def second():
        first_holds.wait(30)
        second_started.set()
        with concurrency_slot(ConcurrencyLimitConfig(name="gpu-test"), lambda _m: None):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert events == ["first in", "first out", "second in"]
    assert concurrency_slot(ConcurrencyLimitConfig(name=None), print).__class__.__name__ == "nullcontext"
