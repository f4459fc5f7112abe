"""Run records (which version every stage of one flow run used, and the effective config) and refs
(small movable names such as the promoted model; their history is the bucket's object versions)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from .storage import NotFound, ObjectStore, join_key

RUNS = "runs"
REFS = "refs"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def run_key(run_id: str) -> str:
    """Where a run's record is in the store."""
    return join_key(RUNS, f"{run_id}.json")


class RunRecorder:
    """Keeps `runs/<run_id>.json` up to date while a flow run goes; a retry of the run adds an attempt."""

    def __init__(self, store: ObjectStore, run_id: str, *, flow: str, config: dict, parameters: dict):
        self.store = store
        self.key = run_key(run_id)
        self._lock = threading.Lock()
        previous = read_run(store, run_id)
        attempt = (previous or {}).get("attempt", 0) + 1
        self.record = {
            "run_id": run_id,
            "flow": flow,
            "attempt": attempt,
            "status": "running",
            "started_at": (previous or {}).get("started_at", _now()),
            "attempt_started_at": _now(),
            "finished_at": None,
            "parameters": parameters,
            "config": config,
            "stages": dict((previous or {}).get("stages", {})),
        }
        self._write()

    def stage(self, artifact: str, result: dict) -> None:
        with self._lock:
            self.record["stages"][artifact] = {**result, "attempt": self.record["attempt"], "at": _now()}
            self._write()

    def forget(self, status: str) -> None:
        """Drop the stages of earlier attempts recorded with this status (e.g. not_run: a retry decides anew)."""
        with self._lock:
            self.record["stages"] = {name: stage for name, stage in self.record["stages"].items()
                                     if stage.get("status") != status}
            self._write()

    def stage_failed(self, artifact: str, error: str) -> None:
        self.stage(artifact, {"status": "failed", "error": error})

    def note(self, message: str) -> None:
        """Why a run that completes did less than its flow would (e.g. a refresh with nothing new)."""
        with self._lock:
            self.record["note"] = message
            self._write()

    def finish(self, status: str) -> dict:
        with self._lock:
            self.record["status"] = status
            self.record["finished_at"] = _now()
            self._write()
            return self.record

    def _write(self) -> None:
        self.store.put_bytes(self.key, _dump(self.record))


def read_run(store: ObjectStore, run_id: str) -> dict | None:
    try:
        return json.loads(store.get_bytes(run_key(run_id)))
    except NotFound:
        return None


def list_runs(store: ObjectStore) -> list[dict]:
    runs = []
    for key in store.list(RUNS + "/"):
        if key.endswith(".json"):
            runs.append(json.loads(store.get_bytes(key)))
    return sorted(runs, key=lambda run: run.get("started_at", ""))


def set_ref(store: ObjectStore, name: str, target: dict) -> dict:
    """Point a movable name at an artifact version; the previous target stays in the key's history."""
    body = {"name": name, **target, "updated_at": _now()}
    store.put_bytes(join_key(REFS, f"{name}.json"), _dump(body))
    return body


def get_ref(store: ObjectStore, name: str) -> dict | None:
    try:
        return json.loads(store.get_bytes(join_key(REFS, f"{name}.json")))
    except NotFound:
        return None


def ref_history(store: ObjectStore, name: str) -> list[dict]:
    """Every target the ref has had, newest first."""
    key = join_key(REFS, f"{name}.json")
    return [
        {"version_id": version.version_id, **json.loads(store.get_version(key, version.version_id))}
        for version in store.versions(key)
    ]
