"""The local stack's start: an invalid pipeline.yaml fails before any server starts (nothing is left
running; the deployment tests start a real stack)."""

from __future__ import annotations

import pytest

from pipeline import stack
from pipeline.config import ConfigError
from pipeline.seaweed import free_port_block


def test_an_invalid_config_fails_before_anything_starts(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("sources: [{name: web, kind: warc, location: x}]\nrefresh: {cron: '61 * * * *'}\n")
    s3_port, prefect_port = free_port_block(2)
    with pytest.raises(ConfigError, match="not a valid cron schedule"):
        stack.up(tmp_path / "stack", s3_port=s3_port, prefect_port=prefect_port, config_path=config,
                 say=lambda _m: None)
    assert stack.load_stack(tmp_path / "stack") is None
    assert stack.port_is_free(s3_port) and stack.port_is_free(prefect_port)
