"""One module per pipeline stage: a pure core plus a thin Prefect task."""
