"""Prefect flows: the DAG wiring of the pipeline, no stage logic."""
