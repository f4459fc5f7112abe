"""The libraries that read, judge and encode text, free of storage and orchestration: raw input
formats (WARC, JSONL, HTML), the quality rules (Gopher, C4, FineWeb), MinHash, PII redaction, toxicity
word lists and classifiers, eval-set decontamination, the chat template and packer, token shards, and
the eval items built from held-out text. The stages in tasks/ apply them; pipeline/ is the plumbing."""
