"""The eval stage on the harness: every model scored by lm-evaluation-harness on the shipped and the
generated task YAMLs, offline; its numbers equal the `lm_eval` CLI's on the exported HF directory; its
bits per byte equal a direct transformers computation; the comparison table with deltas; the gate's
card and the ref that moves only where the decision was made."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.artifacts import fetch_verified, files_with_role
from pipeline.config import EvalConfig, GeneratedTasksConfig, HeldOutConfig
from tasks.checkpoints import artifact_model
from tasks.evaluate import eval_spec, held_out_documents, results_table, run_eval
from tests.tasks.test_gate import results
from tests.conftest import SAMPLE
from tests.model.test_scoring import reference_nats
from tests.tasks import chain

TASKS = SAMPLE / "eval"
SETTINGS = EvalConfig(
    tasks=["debian_cloze"], include_path=[str(TASKS)], batch_size=8,
    heldout=HeldOutConfig(max_bytes_per_source=150_000),
    generated=GeneratedTasksConfig(languages=["en", "de", "fr", "es", "it", "pt", "ca", "nl"], cloze_items=40,
                                   last_word_items=20))


def block_network(monkeypatch) -> None:
    """Any connection beyond this machine fails, as on a machine with no network."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost") or "/" in host):
            raise OSError(f"no network in this test: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def evaluated(model_phases):
    """The eval stage's manifest for base (pretrain), cpt and ift, the candidate ift against the base."""
    phases = model_phases
    models = {"base": artifact_model(phases.pretrain), "cpt": artifact_model(phases.cpt),
              "ift": artifact_model(phases.ift)}
    spec = eval_spec(SETTINGS, models, "ift", "base", [*phases.tokens.values(), *phases.filters.values()], [TASKS])
    manifest = chain.committed(phases.store, spec)
    if manifest is None:
        with pytest.MonkeyPatch.context() as patch:  # offline: the shipped YAMLs and the generated ones only
            block_network(patch)
            patch.setattr(sys, "dont_write_bytecode", False)  # the task loader's __pycache__ is not uploaded
            manifest = run_eval(SETTINGS, phases.store, spec, models, "ift", "base", phases.tokens, phases.filters,
                                [TASKS], general=["web"], domain=["docs"], progress=lambda _m: None)
    return manifest


def test_eval_scores_every_model_on_the_harness_and_held_out_text(evaluated, model_phases, tmp_path):
    manifest = evaluated
    metrics = manifest["summary"]["metrics"]
    base, cpt, ift = metrics["base"], metrics["cpt"], metrics["ift"]
    assert cpt["bpb domain"] < base["bpb domain"] and cpt["perplexity domain"] < base["perplexity domain"]
    assert ift["assistant loss"] < base["assistant loss"]
    for model in (base, cpt, ift):
        assert 0 < model["bpb general"] < 10 and 0 < model["bpb docs"] < 10
        assert model["debian_cloze acc"] in {hits / 40 for hits in range(41)}
        assert {"debian_cloze acc_norm", "heldout_cloze acc_mutual_info", "heldout_last_word perplexity",
                "heldout_last_word acc", "CORE"} <= set(model)
    harness = manifest["summary"]["harness"]
    assert harness["version"] == "0.4.13" and harness["generated_tasks"] == ["heldout_cloze", "heldout_last_word"]
    assert harness["tasks"]["debian_cloze"]["version"] == 1 and harness["tasks"]["debian_cloze"]["items"] == 40
    assert manifest["counts"]["items"] == {"debian_cloze": 40, "heldout_cloze": 40, "heldout_last_word": 20}
    rows = {row["metric"]: row for row in manifest["summary"]["table"]}
    domain = rows["bpb domain"]
    assert domain["cpt - base"] == pytest.approx(domain["cpt"] - domain["base"], abs=2e-4)
    assert {"base", "cpt", "ift", "cpt - base", "ift - base"} == set(domain) - {"metric"}
    gate = manifest["summary"]["gate"]
    assert gate["candidate_model"] == f"ift@{model_phases.ift['version']}" and gate["baseline"] == "base"
    assert [check["metric"] for check in gate["checks"]] == ["held-out domain tokens", "bpb domain", "bpb general"]
    assert gate["promote"] is all(check["passed"] for check in gate["checks"])
    roles = {entry["path"]: entry["role"] for entry in manifest["files"]}
    assert roles["results.json"] == "results" and roles["tasks/heldout_cloze.yaml"] == "tasks"
    assert roles["harness/ift/samples_debian_cloze.jsonl"] == "harness"
    samples = _fetch(model_phases.store, manifest, "harness/ift/samples_debian_cloze.jsonl", tmp_path)
    samples = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(samples) == 40 and {"doc", "arguments", "resps", "acc", "acc_norm"} <= set(samples[0])


def _fetch(store, manifest: dict, path: str, directory: Path) -> Path:
    [entry] = [e for e in manifest["files"] if e["path"] == path]
    return fetch_verified(store, manifest, entry, directory)


def _numbers(results: dict) -> dict[str, float]:
    return {f"{task} {key}": value for task, values in results.items() for key, value in values.items()
            if "," in key and "stderr" not in key and isinstance(value, float)}


def test_local_task_numbers_equal_the_lm_eval_cli_on_the_exported_directory(evaluated, model_phases, tmp_path):
    """The same task YAMLs (the shipped one, and the generated folder as stored in the artifact), run by
    the harness's CLI on the pretrain artifact's hf/ directory, with no network."""
    store = model_phases.store
    model_dir = chain.hf_directory(store, model_phases.pretrain, tmp_path / "hf")
    folders = tmp_path / "tasks"  # the CLI takes one folder, and reads the YAMLs of its subfolders
    shutil.copytree(TASKS, folders / "sample")
    generated = folders / "generated"
    generated.mkdir()
    for entry in files_with_role(evaluated, "tasks"):
        fetch_verified(store, evaluated, entry, tmp_path).rename(generated / Path(entry["path"]).name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    subprocess.run([str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
                    f"pretrained={model_dir},tokenizer={model_dir},dtype=float32", "--device", "cpu",
                    "--tasks", "debian_cloze,heldout_cloze,heldout_last_word", "--include_path", str(folders),
                    "--batch_size", "8", "--output_path", str(tmp_path / "out")],
                   check=True, env=env, capture_output=True, timeout=600)
    [cli_file] = (tmp_path / "out").rglob("results_*.json")
    cli = _numbers(json.loads(cli_file.read_text())["results"])
    ours = _numbers(json.loads(_fetch(store, evaluated, "harness/base/results.json", tmp_path).read_text())["results"])
    assert len(cli) == 8 and set(ours) == set(cli)  # acc, acc_norm, acc_mutual_info x 2 tasks; perplexity, acc
    for name, value in cli.items():
        assert ours[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    assert evaluated["summary"]["metrics"]["base"]["heldout_last_word perplexity"] == pytest.approx(
        cli["heldout_last_word perplexity,none"], rel=1e-6)


def test_bits_per_byte_equal_a_direct_transformers_computation(evaluated, model_phases, tmp_path):
    """The stage's held-out nats and bits per byte for a source, against a plain unbatched loop over the
    same documents (disjoint windows of the model's context: the stage's default)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = model_phases.store
    model_dir = chain.hf_directory(store, model_phases.cpt, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    documents = held_out_documents(store, model_phases.filters, model_phases.tokens, 150_000, tmp_path)["docs"]
    from model.families import context_length

    window = context_length(model.config.to_dict())
    nats, tokens, size = 0.0, 0, 0
    for doc in documents:
        ids = [tokenizer.eos_token_id] + tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        nats += reference_nats(model, ids, window, window)
        tokens += len(ids) - 1
        size += len(doc.text.encode("utf-8"))
    results = json.loads(_fetch(store, evaluated, "results.json", tmp_path).read_text())["results"]["cpt"]["heldout"]
    assert len(documents) > 1 and max(len(tokenizer(d.text)["input_ids"]) for d in documents) > window  # windows
    assert results["docs"]["tokens"] == tokens and results["docs"]["bytes"] == size
    assert results["docs"]["nats"] == pytest.approx(nats, rel=1e-5)
    assert results["docs"]["bits_per_byte"] == pytest.approx(nats / (math.log(2) * size), rel=1e-5)
    assert evaluated["summary"]["metrics"]["cpt"]["bpb docs"] == pytest.approx(nats / (math.log(2) * size), abs=1e-4)


def test_the_generated_tasks_and_the_shipped_loader_are_one_module():
    from corpus.eval_tasks import LOADER_SOURCE, MULTIPLE_CHOICE, task_yaml

    assert (TASKS / "jsonl_data.py").read_text() == LOADER_SOURCE
    assert (TASKS / "debian_cloze.yaml").read_text() == task_yaml("debian_cloze", MULTIPLE_CHOICE)


def test_results_table_has_deltas_against_the_base_and_the_gates_baseline():
    table = results_table({"base": results(1.0, 2.0), "ift": results(1.1, 1.5), "current": results(1.05, 1.6)},
                          candidate="ift", baseline="current")
    rows = {row["metric"]: row for row in table}
    assert rows["bpb general"] == {"metric": "bpb general", "base": 1.0, "ift": 1.1, "current": 1.05,
                                   "ift - base": 0.1, "current - base": 0.05, "ift - current": 0.05}
    assert rows["bpb domain"]["ift - current"] == -0.1 and rows["CORE"]["ift - base"] is None
