"""Shared plumbing every stage imports: config schema, artifact store, shard I/O, local stack."""
