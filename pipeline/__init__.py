"""The plumbing every stage imports: config schema, artifact store, runs and refs, work units and their
parallel runners, the local stack (SeaweedFS, Prefect) and the CLI. Text processing lives in corpus/."""
