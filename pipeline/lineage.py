"""Lineage in one command: the tree from an artifact (a model, usually a ref such as `current`) back to
the raw input files, read from the manifests alone (`pretrain-pipeline lineage`).

Each node is a committed artifact version with what built it: stage, code version, the sha256 of its
config section, git sha, package version, the flow run (from the manifest's `build`; for artifacts
built before manifests recorded it, the run record that executed it) and when. Its children are the
artifacts its manifest names among its inputs, wherever they sit in `inputs` (a version is a hash
that belongs to one artifact, so a version alone is enough to find it); other inputs that identify
something outside the store (a checkpoint directory's or a model file's sha256) are listed as they
are. The leaves are the ingest artifacts with the files they read (path, bytes, sha256 of a local
file or the S3 ETag) from their `inputs.jsonl`. An artifact read by several others appears once in
full, then as "(above)".
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .artifacts import (ARTIFACTS, VERSION_RE, canonical_json, fetch_verified, files_with_role, list_artifacts,
                        list_versions, read_manifest)
from .runs import get_ref, list_runs
from .storage import ObjectStore, join_key


class LineageError(ValueError):
    """The target names no ref and no committed artifact version."""


def node_id(manifest: dict) -> str:
    return f"{manifest['artifact']}@{manifest['version']}"


def resolve(store: ObjectStore, target: str) -> dict:
    """`ref`, `artifact`, `artifact@version` or `artifact@latest` -> the manifest."""
    name, _, version = target.partition("@")
    if not version:
        ref = get_ref(store, name)
        if ref is not None:
            manifest = read_manifest(store, ref["artifact"], ref["version"])
            if manifest is None:
                raise LineageError(f"the ref {name!r} points at {ref['artifact']}@{ref['version']}, which is not "
                                   f"committed in {store.uri()}")
            return manifest
    if version in ("", "latest"):
        versions = list_versions(store, name)
        if not versions:
            raise LineageError(f"{target!r} is neither a ref nor an artifact with a committed version in {store.uri()} "
                               f"(see `pretrain-pipeline artifacts list`)")
        return versions[-1]
    manifest = read_manifest(store, name, version)
    if manifest is None:
        raise LineageError(f"{name}@{version} is not committed in {store.uri()}")
    return manifest


def version_index(store: ObjectStore) -> dict[str, str]:
    """{version: artifact} of every version directory in the store."""
    index = {}
    for artifact in list_artifacts(store):
        for child in store.list_children(join_key(ARTIFACTS, artifact)):
            if VERSION_RE.match(child):
                index[child] = artifact
    return index


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, scalar) of every leaf of a manifest's `inputs`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _leaves(item, f"{path}[{position}]")
    else:
        yield path, value


def input_files(store: ObjectStore, manifest: dict) -> list[dict]:
    """The raw files an ingest artifact read (its inputs.jsonl), each {path, bytes, fingerprint}."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for entry in files_with_role(manifest, "inputs"):
            rows += [json.loads(line) for line in fetch_verified(store, manifest, entry, Path(scratch)).read_text()
                     .splitlines() if line.strip()]
    return rows


def lineage(store: ObjectStore, target: str) -> dict:
    """{"target", "root", "nodes": {artifact@version: node}}: every artifact the target was built from."""
    root = resolve(store, target)
    index = version_index(store)
    built_by_run = {}
    for run in list_runs(store):
        for artifact, stage in run.get("stages", {}).items():
            if stage.get("status") == "executed" and stage.get("version"):
                built_by_run.setdefault(f"{artifact}@{stage['version']}", run["run_id"])
    nodes: dict[str, dict] = {}
    pending = [root]
    while pending:
        manifest = pending.pop()
        key = node_id(manifest)
        if key in nodes:
            continue
        build = manifest.get("build", {})
        node = {
            "artifact": manifest["artifact"], "version": manifest["version"], "stage": manifest.get("stage"),
            "code_version": manifest.get("code_version"),
            "config_sha256": hashlib.sha256(canonical_json(manifest.get("config", {}))).hexdigest(),
            "git_sha": build.get("git_sha"), "package_version": build.get("package_version"),
            "flow_run_id": build.get("flow_run_id") or built_by_run.get(key),
            "flow_run_name": build.get("flow_run_name"), "committed_at": build.get("committed_at"),
            "uri": manifest.get("uri"), "inputs": [],
        }
        for path, value in _leaves(manifest.get("inputs", {})):
            if isinstance(value, str) and VERSION_RE.match(value) and value in index:
                upstream = read_manifest(store, index[value], value)
                if upstream is not None:
                    node["inputs"].append({"key": path, "node": node_id(upstream)})
                    pending.append(upstream)
                    continue
            if isinstance(value, str) and value:
                node["inputs"].append({"key": path, "external": value})
        if manifest.get("stage") == "ingest":
            node["source"] = manifest.get("summary", {}).get("source")
            node["files"] = input_files(store, manifest)
        nodes[key] = node
    return {"target": target, "root": node_id(root), "nodes": nodes}


def _describe(node: dict) -> str:
    run = node["flow_run_id"] or "-"
    if node["flow_run_name"]:
        run = f"{node['flow_run_name']} ({run})"
    return (f"{node['artifact']}@{node['version']}  stage {node['stage']} code {node['code_version']}  "
            f"config {node['config_sha256'][:12]}  git {(node['git_sha'] or '-')[:12]}  flow run {run}  "
            f"{node['committed_at'] or ''}").rstrip()


def render(tree: dict) -> list[str]:
    """The tree as text, root first, each artifact in full once."""
    nodes, shown, lines = tree["nodes"], set(), []

    def walk(key: str, label: str, prefix: str, last: bool, top: bool) -> None:
        node = nodes[key]
        branch = "" if top else ("└── " if last else "├── ")
        if key in shown:
            lines.append(f"{prefix}{branch}{label}{key}  (above)")
            return
        shown.add(key)
        lines.append(f"{prefix}{branch}{label}{_describe(node)}")
        inner = prefix if top else prefix + ("    " if last else "│   ")
        children: list[tuple[str, Any]] = [("input", entry) for entry in node["inputs"]]
        if node.get("source"):
            source = node["source"]
            children.append(("text", f"source {source.get('name')}: {source.get('kind')} {source.get('location')}"))
        children += [("text", f"file {row['path']}  {row['bytes']:,} bytes  "
                              f"{_fingerprint(row['fingerprint'])}") for row in node.get("files", [])]
        for position, (kind, child) in enumerate(children):
            is_last = position == len(children) - 1
            if kind == "input" and "node" in child:
                walk(child["node"], f"{child['key']}: ", inner, is_last, False)
            else:
                text = child if kind == "text" else f"{child['key']}: {child['external']}"
                lines.append(f"{inner}{'└── ' if is_last else '├── '}{text}")

    walk(tree["root"], "", "", True, True)
    return lines


def _fingerprint(value: str) -> str:
    """A local file's fingerprint is its sha256; an S3 object's is `etag:<ETag>:<size>`."""
    return value if value.startswith("etag:") else f"sha256 {value}"
