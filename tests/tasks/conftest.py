"""Fixtures shared by the stage tests: the bundled sample run through the document stages once."""

from __future__ import annotations

import pytest

from pipeline.config import JsonlSource, WarcSource
from pipeline.storage import LocalStore
from tests.conftest import SAMPLE
from tests.tasks import chain


@pytest.fixture(scope="session")
def filtered_sample(tmp_path_factory):
    """(store, {source: filter manifest}) for the sample's web and docs sources (no dedup: quicker)."""
    store = LocalStore(tmp_path_factory.mktemp("filtered") / "store", "p")
    sources = [WarcSource(name="web", kind="warc", location=str(SAMPLE / "web")),
               JsonlSource(name="docs", kind="jsonl", location=str(SAMPLE / "jsonl"), id_field="id", url_field="url")]
    inputs = {}
    for source in sources:
        langid = chain.langid(store, source.name, chain.clean(store, source.name, chain.ingest(store, source)))
        inputs[source.name] = chain.filter(store, source.name, langid)
    return store, inputs
