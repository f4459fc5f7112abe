"""The typed schema of pipeline.yaml, its loading, per-run overrides and validation errors.

Every tunable of the pipeline lives here. Validation runs before any work starts: an unknown key,
a wrong type or an out-of-range value raises ConfigError naming the key's dotted path and what is
allowed. Overrides are dotted keys (`ingest.workers=4`, `sources.web.location=s3://b/p`) applied to
the raw YAML before validation, so they are validated exactly like the file.

Fields marked `unversioned` change how a stage runs (parallelism, paths of scratch space) but not
what it produces; they are left out of artifact versions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

UNVERSIONED = {"unversioned": True}


class ConfigError(ValueError):
    """pipeline.yaml (or an override) is invalid; the message names each bad key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def versioned(self) -> dict[str, Any]:
        """This section as JSON, without the fields that do not change a stage's output."""
        data = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("unversioned"):
                data.pop(name, None)
        return data


class StorageConfig(Section):
    """Where artifacts live. Credentials never appear here: boto3 reads them from the environment."""

    backend: Literal["s3", "local"] = "s3"
    endpoint_url: str | None = Field(
        None, description="S3 endpoint (SeaweedFS, MinIO, ...); null means AWS's own endpoint"
    )
    region: str = "us-east-1"
    bucket: str = Field("pretrain-pipeline", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]+$")
    prefix: str = Field("pipeline", description="key prefix of everything this pipeline writes")
    local_root: str = Field(".artifacts", description="root directory when backend is local")
    max_attempts: int = Field(10, ge=1, le=50, description="S3 request attempts (adaptive retry on throttling)")
    retry_seconds: float = Field(
        300, ge=0, le=86400,
        description="keep retrying an S3 request that failed on a transient error (server down or restarting, "
                    "connection reset, timeout, 5xx, throttling) for this long after its first failure; 0: only "
                    "boto3's max_attempts",
    )
    retry_backoff_seconds: float = Field(0.5, gt=0, le=60, description="first pause between those retries; doubles")
    retry_max_backoff_seconds: float = Field(15, gt=0, le=600, description="longest pause between those retries")
    multipart_threshold_mb: int = Field(64, ge=5, le=5120)
    create_bucket: bool = Field(True, description="create the bucket (with versioning on) if it is missing")
    presigned_links: bool = Field(
        False,
        description="link artifacts in the Prefect UI with presigned URLs (clickable; the loss curves show as "
                    "images) — a presigned URL carries the access key ID, never the secret; false: s3:// URIs only")

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        value = value.strip("/")
        if not value or not re.fullmatch(r"[A-Za-z0-9._\-/]+", value):
            raise ValueError("must be a non-empty key prefix of letters, digits, '.', '_', '-', '/'")
        return value


SOURCE_NAME = r"^[a-z0-9][a-z0-9_\-]*$"


class _SourceBase(Section):
    name: str = Field(pattern=SOURCE_NAME, max_length=64)
    # Where the data lies does not change what it is: the version comes from the files' fingerprints.
    location: str = Field(
        description="a file, a directory, or an s3://bucket/prefix URI", json_schema_extra=UNVERSIONED
    )
    include: list[str] | None = Field(
        None, description="glob patterns of file names to read; default depends on the kind"
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for an s3:// location on another server than storage's",
        json_schema_extra=UNVERSIONED,
    )
    # What the data is for does not change how it is processed, only which training phase reads it.
    role: Literal["general", "domain"] = Field(
        "general", json_schema_extra=UNVERSIONED,
        description="general: pretraining's mixture (and CPT's replay); domain: continued pretraining",
    )


class WarcSource(_SourceBase):
    kind: Literal["warc"]


class JsonlSource(_SourceBase):
    kind: Literal["jsonl"]
    text_field: str = "text"
    id_field: str | None = Field(None, description="field holding a stable document id, if the data has one")
    url_field: str | None = "url"
    date_field: str | None = Field(None, description="field holding the fetch date (ISO 8601)")
    content_type: Literal["text/plain", "text/html"] = "text/plain"


class HtmlSource(_SourceBase):
    kind: Literal["html"]
    base_url: str | None = Field(None, description="URL prefix that the relative file path is appended to")
    charset: str | None = Field(None, description="declared charset of the files, if known")


Source = Annotated[Union[WarcSource, JsonlSource, HtmlSource], Field(discriminator="kind")]
SOURCE_KINDS = {"warc": WarcSource, "jsonl": JsonlSource, "html": HtmlSource}


class ParallelStageConfig(Section):
    """What every stage that maps over work units has: parallelism, progress, scratch space."""

    workers: int = Field(2, ge=1, le=1024, json_schema_extra=UNVERSIONED)
    progress_every_seconds: float = Field(10.0, gt=0, json_schema_extra=UNVERSIONED)
    scratch_dir: str | None = Field(
        None, description="local scratch space for shards before upload; default: system temp",
        json_schema_extra=UNVERSIONED,
    )


class DataStageConfig(ParallelStageConfig):
    """A stage writing Parquet document shards: their bounds and compression."""

    shard_max_mb: int = Field(64, ge=1, le=4096, description="content per Parquet shard")
    shard_max_docs: int = Field(50_000, ge=1)
    compression_level: int = Field(
        1, ge=-7, le=22, description="zstd level of the Parquet shards: 1 writes ~1.7x faster than 3, files ~40% larger"
    )


class IngestConfig(DataStageConfig):
    unit_max_mb: int = Field(
        64, ge=1, le=65536, description="small files (HTML folders, JSONL) are grouped into work units of this size"
    )
    max_record_mb: float = Field(10.0, gt=0, le=2048, description="larger records are quarantined as oversize")
    max_decompressed_mb: float = Field(
        65536.0, gt=0, le=16 * 1024 * 1024,
        description="a compressed JSONL file (.gz, .zst) is decoded up to this many MB; what follows is not read "
                    "and is quarantined as decompression_limit (the records before it are kept)",
    )
    max_compression_ratio: float = Field(
        100.0, ge=1, le=1_000_000,
        description="a compressed JSONL file is also decoded only up to this many times its compressed size (same "
                    "reason): text compresses 3-10x, a decompression bomb ~1,000x (gzip) to ~32,000x (zstd)",
    )
    html_content_types: list[str] = Field(
        ["text/html", "application/xhtml+xml"], min_length=1, description="WARC payload types kept as documents"
    )
    quarantine_sample_bytes: int = Field(
        4096, ge=0, le=1 << 20, description="bytes of a quarantined record kept for inspection"
    )
    writer_thread: Literal["auto"] | bool = Field(
        "auto", json_schema_extra=UNVERSIONED,
        description="compress and upload shards on a second thread per worker; auto: when there are at "
                    "least two cores per worker",
    )


Extractor = Literal["resiliparse", "trafilatura"]

DEFAULT_BOILERPLATE = [
    r"skip to (the )?(main )?content", r"skip (to )?navigation", r"jump to (navigation|search|content)",
    r"(accept|allow|reject|decline) (all )?cookies", r"(manage )?cookie (settings|preferences|policy)",
    r"(we|this (web)?site) uses? cookies\b.{0,300}", r"back to top", r"toggle navigation",
    r"(share|tweet|pin) (this|on \w+)( (page|article|post|story))?", r"print this (page|article)",
    r"subscribe to our newsletter", r"advertisement",
]


class CleanConfig(DataStageConfig):
    extractor: Extractor = "resiliparse"
    extractor_by_source: dict[str, Extractor] = Field(
        {}, description="per-source extractor, e.g. {news: trafilatura} where precision matters"
    )
    min_chars: int = Field(200, ge=0, description="shorter texts are removed as too_short")
    boilerplate_patterns: list[str] = Field(
        DEFAULT_BOILERPLATE, description="regexes; a line matching one as a whole (case-insensitive) is removed"
    )
    removed_sample_bytes: int = Field(2048, ge=0, le=1 << 20)

    @field_validator("boilerplate_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return patterns

    def extractor_for(self, source: str) -> str:
        return self.extractor_by_source.get(source, self.extractor)


class LangidConfig(DataStageConfig):
    model_path: str | None = Field(
        None, json_schema_extra=UNVERSIONED,
        description="fastText language-ID model (lid.176.bin, GlotLID, ...); null: the lid.176.ftz installed "
                    "by `make`. The version follows the model file's sha256, not its path.",
    )
    top_k: int = Field(3, ge=1, le=20, description="labels kept in the lang_topk column")
    keep: list[str] | Literal["all"] = Field("all", description="languages kept in data/, or all")
    threshold: float = Field(0.65, ge=0, le=1, description="minimum top score to keep a document")
    thresholds: dict[str, float] = Field({}, description="per-language thresholds, e.g. {en: 0.5}")
    action: Literal["drop", "route"] = Field(
        "drop", description="for the rest: drop to removed/ with the reason, or route to routed/lang=<xx>/"
    )
    removed_sample_bytes: int = Field(2048, ge=0, le=1 << 20)

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, thresholds: dict[str, float]) -> dict[str, float]:
        for lang, value in thresholds.items():
            if not 0 <= value <= 1:
                raise ValueError(f"threshold for {lang!r} must be between 0 and 1, got {value}")
        return thresholds

    def threshold_for(self, lang: str) -> float:
        return self.thresholds.get(lang, self.threshold)

    def keeps(self, lang: str) -> bool:
        return self.keep == "all" or lang in self.keep


class DedupConfig(DataStageConfig):
    """Exact and MinHash near-duplicate removal across all sources (and earlier runs, via `against`)."""

    exact: bool = Field(True, description="remove documents whose normalised text is identical")
    near: bool = Field(True, description="remove MinHash LSH near-duplicates")
    ngram: int = Field(5, ge=1, le=64, description="shingle size in words (in characters for char_ngram_languages)")
    char_ngram_languages: list[str] = Field(
        ["ja", "zh", "th", "lo", "km", "my", "bo"],
        description="languages written without spaces between words: shingles of characters instead of words",
    )
    num_perm: int = Field(112, ge=2, le=1024, description="MinHash permutations (= bands x rows)")
    bands: int = Field(14, ge=1, le=1024)
    rows: int = Field(8, ge=1, le=1024)
    seed: int = Field(1, ge=0, le=2**32 - 1, description="seed of the MinHash permutations")
    scheme: Literal["affine32"] = Field(
        "affine32", description="datasketch permutation scheme, pinned: sketches of different schemes never mix"
    )
    keep: Literal["first", "longest", "earliest"] = Field(
        "first", description="a cluster's representative: first in input order (sources in config order), "
                             "the longest text, or the earliest fetch_date; ties go to input order",
    )
    against: str | None = Field(
        None, description="an earlier dedup artifact version, or the name of a ref pointing at one: documents "
                          "duplicating what it (and the runs before it) kept are removed too",
    )
    partition: Literal["language", "none"] = Field(
        "language", description="language: documents only cluster with documents of the same language (a routed "
                                "partition's, for routed documents), globally within it, as FineWeb-2 does; "
                                "none: every document with every other",
    )
    url_dedup: bool = Field(False, description="keep one document per normalised URL (removed: duplicate_url)")
    url_keep: Literal["longest", "newest"] = Field(
        "longest", description="the document kept for a URL: the longest text, or the newest fetch_date (ties: "
                               "input order)",
    )
    removed_sample_bytes: int = Field(2048, ge=0, le=1 << 20)

    @model_validator(mode="after")
    def _bands_fill_permutations(self) -> "DedupConfig":
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands x rows must equal num_perm: {self.bands} x {self.rows} != {self.num_perm}")
        return self

    def threshold(self) -> float:
        """The Jaccard similarity at which a pair becomes a candidate with probability 1/2 (approximately)."""
        return (1 / self.bands) ** (1 / self.rows)


class DecontaminationConfig(Section):
    """Eval sets whose items must not appear in training data (the `decontamination` filter rule)."""

    eval_sets: list[str] = Field(
        [], description="JSONL files (or glob patterns) of eval items; relative to pipeline.yaml's directory"
    )
    fields: list[str] = Field(
        ["context", "question", "query", "choices", "text", "answer"],
        description="fields of an item whose text is indexed (strings, or lists of strings)",
    )
    ngram: int = Field(13, ge=3, le=64, description="a shared word n-gram of this size marks a document")


class ClassifierConfig(Section):
    """The `quality_classifier` filter rule: a fastText model trained by `pretrain-pipeline quality-model train`."""

    model: str | None = Field(
        None, description="a quality-model artifact version, a ref name pointing at one, or a local .bin/.ftz path",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="documents whose high-quality probability is lower are removed")


class ToxicityClassifierConfig(Section):
    """The `toxicity_classifier` filter rule: any scoring function, e.g. alt-profanity-check's for English."""

    function: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:function taking a list of texts and returning their toxicity scores in [0, 1], "
                    "e.g. profanity_check:predict_prob (pip install '.[toxicity]')",
    )
    threshold: float = Field(0.8, ge=0, le=1, description="documents scoring this or more are removed")
    languages: list[str] = Field(["en"], description="languages the function is applied to; [] for all")


class QualityModelConfig(Section):
    """Training of the fastText quality classifier (positive: curated text, negative: raw crawl)."""

    max_docs_per_class: int = Field(50_000, ge=10)
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5, description="documents kept aside to measure the model")
    max_chars: int = Field(20_000, ge=100, description="characters of a document used (its beginning)")
    epoch: int = Field(5, ge=1, le=100)
    lr: float = Field(0.1, gt=0, le=2)
    word_ngrams: int = Field(2, ge=1, le=5)
    dim: int = Field(64, ge=8, le=512)
    min_count: int = Field(2, ge=1)
    buckets: int = Field(200_000, ge=1000, le=10_000_000,
                         description="hash buckets of the word n-grams (fastText's default 2M makes ~0.5 GB models)")
    seed: int = Field(0, ge=0, description="sampling and shuffling seed; training is single-threaded, so deterministic")
    quantize: bool = Field(False, description="store a quantized .ftz (smaller, slightly less accurate)")


FilterRule = Literal["gopher_quality", "gopher_repetition", "c4", "fineweb", "toxicity", "toxicity_classifier",
                     "quality_classifier", "decontamination"]
FILTER_RULES = ["gopher_quality", "gopher_repetition", "c4", "fineweb", "toxicity", "decontamination"]


class FilterConfig(DataStageConfig):
    """Heuristic quality rules, a word-list toxicity check and PII redaction, in one pass."""

    rules: list[FilterRule] = Field(FILTER_RULES, description="rules applied in this order; the first to fire removes")
    per_language: dict[str, list[FilterRule]] = Field(
        {lang: ["c4", "fineweb", "toxicity", "decontamination"] for lang in ("ja", "zh", "th")},
        description="the rules for documents of a language, instead of `rules` (the Gopher word rules assume "
                    "spaces between words)",
    )
    per_source: dict[str, list[FilterRule]] = Field({}, description="the rules for a source, instead of `rules`")
    stop_word_languages: list[str] = Field(["en"], description="languages the Gopher stop-word rule applies to")
    c4_remove_lines: bool = Field(True, description="keep C4's line removals in the text of kept documents")
    gopher_quality: dict[str, float | int | bool | list[str]] = Field(
        {}, description="threshold overrides, e.g. {min_doc_words: 30}, and stop_words")
    gopher_repetition: dict[str, float | int | bool | list] = Field({})
    c4: dict[str, float | int | bool] = Field({})
    fineweb: dict[str, float | int | bool] = Field({})
    toxicity: dict[str, float | str] = Field({}, description="{mode: any|ratio, max_ratio: 0.001}")
    language_thresholds: str | None = Field(
        None, json_schema_extra=UNVERSIONED,
        description="a folder of <lang>.yaml files of per-language rule settings and stop words (e.g. FineWeb-2's, "
                    "data/language_thresholds); relative to pipeline.yaml's directory. The version follows their "
                    "content, not the path",
    )
    pii: dict[str, bool] = Field({}, description="{emails, ip_addresses, phone_numbers}: true to redact (default all)")
    classifier: ClassifierConfig = ClassifierConfig()
    toxicity_classifier: ToxicityClassifierConfig = ToxicityClassifierConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    removed_sample_bytes: int = Field(2048, ge=0, le=1 << 20)
    _languages: dict[str, dict[str, dict[str, Any]]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _settings_build(self, info: ValidationInfo) -> "FilterConfig":
        from corpus.language_thresholds import RULES, load_language_thresholds, rule_settings
        from corpus.pii import PiiRedactor

        for name in RULES:
            rule_settings(name, getattr(self, name))
        rule_settings("pii", self.pii, PiiRedactor)
        if self.language_thresholds is not None:
            folder = Path(self.language_thresholds)
            if not folder.is_absolute():
                folder = Path((info.context or {}).get("base_dir") or ".") / folder
            try:
                self._languages = load_language_thresholds(folder)
            except ValueError as exc:
                raise ValueError(f"language_thresholds: {exc}") from None
        used = [self.rules, *self.per_language.values(), *self.per_source.values()]
        if any("quality_classifier" in rules for rules in used) and not self.classifier.model:
            raise ValueError("the quality_classifier rule is listed but filter.classifier.model is not set "
                             "(train one with `pretrain-pipeline quality-model train`)")
        if any("toxicity_classifier" in rules for rules in used) and not self.toxicity_classifier.function:
            raise ValueError("the toxicity_classifier rule is listed but filter.toxicity_classifier.function is not "
                             "set (e.g. profanity_check:predict_prob)")
        return self

    def language_settings(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{lang: {rule: settings}} read from the language_thresholds folder ({} without one)."""
        return self._languages

    def rules_for(self, source: str, lang: str) -> list[str]:
        if source in self.per_source:
            return self.per_source[source]
        return self.per_language.get(lang, self.rules)


class TokenizerConfig(Section):
    """The byte-level BPE tokenizer: trained on a sample of the filtered documents, or loaded from a file."""

    path: str | None = Field(
        None, json_schema_extra=UNVERSIONED,
        description="an existing tokenizer.json to use instead of training one (relative to pipeline.yaml); "
                    "the version follows its sha256, and the special tokens below must be in its vocabulary",
    )
    vocab_size: int = Field(32_000, ge=300, le=1 << 20, description="including the 256 byte symbols and the specials")
    min_frequency: int = Field(2, ge=1, description="a merge needs at least this many occurrences")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="documents sampled for training, by a hash of their id")
    sample_max_mb: float = Field(256, gt=0, description="at most this much text is used for training")
    eos_token: str = Field("<|endoftext|>", min_length=1, description="between documents; also bos/unk for HF")
    pad_token: str = Field("<|pad|>", min_length=1, description="fills the final partial sequence of a shard")
    role_tokens: list[str] = Field(
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        description="chat roles and the end of a turn, reserved for instruction fine-tuning",
    )

    @model_validator(mode="after")
    def _special_tokens_distinct(self) -> "TokenizerConfig":
        specials = [self.eos_token, self.pad_token, *self.role_tokens]
        if len(set(specials)) != len(specials):
            raise ValueError(f"special tokens must be distinct, got {specials}")
        return self

    def special_tokens(self) -> list[str]:
        """In id order: eos is id 0, pad id 1, then the role tokens."""
        return [self.eos_token, self.pad_token, *self.role_tokens]


class TokenizeConfig(ParallelStageConfig):
    """Packing documents into fixed-length token sequences, written as Arrow IPC shards."""

    seq_len: int = Field(1024, ge=8, le=1 << 20, description="tokens a model sees per sequence; rows hold seq_len+1")
    val_fraction: float = Field(0.01, ge=0, lt=0.5, description="documents held out per source, by a hash of the id")
    loss_mask: bool = Field(False, description="add a per-token loss_mask column (instruction fine-tuning sets it)")
    shard_max_sequences: int = Field(16_384, ge=1, description="sequences per Arrow file")
    batch_documents: int = Field(256, ge=1, le=65536, description="documents encoded per encode_batch call",
                                 json_schema_extra=UNVERSIONED)


FINEWEB2_REHYDRATION = {1: 1, 2: 2, 3: 3, 5: 5, 100: 8, 1000: 1}


class RehydrationConfig(Section):
    """Upsampling kept documents by the size of the duplicate cluster they stood for (FineWeb-2's
    "rehydration"): a sequence is repeated by the weight of the cluster size of its main document."""

    enabled: bool = Field(False, description="repeat each sequence by the weight of its cluster size")
    weights: dict[int, int] = Field(
        FINEWEB2_REHYDRATION,
        description="cluster size from which a weight applies -> times a sequence is repeated (FineWeb-2's table: "
                    "1 -> 1, 2 -> 2, 3 -> 3, 4 -> 3, 5-99 -> 5, 100-999 -> 8, 1000+ -> 1)",
    )

    @field_validator("weights")
    @classmethod
    def _weights_cover_every_size(cls, weights: dict[int, int]) -> dict[int, int]:
        if 1 not in weights:
            raise ValueError("needs a weight for cluster size 1 (documents without duplicates)")
        bad = {size: times for size, times in weights.items() if size < 1 or times < 0}
        if bad:
            raise ValueError(f"cluster sizes must be >= 1 and weights >= 0, got {bad}")
        if not any(weights.values()):
            raise ValueError("at least one weight must be positive")
        return dict(sorted(weights.items()))


class MixtureConfig(Section):
    """How many sequences of each source training reads, and in which order."""

    method: Literal["weights", "temperature"] = Field(
        "weights", description="weights: the `weights` below (GPT-3 Table 2.2 style); temperature: weight of a "
                               "source proportional to its size to the power `alpha`",
    )
    weights: dict[str, float] = Field(
        {}, description="per source; unlisted sources weigh 0 if any is listed, else all weigh alike")
    alpha: float = Field(0.7, gt=0, le=1, description="temperature weighting exponent (1: proportional to size)")
    budget_tokens: int | Literal["chinchilla"] = Field(
        "chinchilla", description="training tokens, or chinchilla: tokens_per_parameter x the model's parameters",
    )
    tokens_per_parameter: float = Field(20.0, gt=0, description="the Chinchilla ratio")
    max_epochs: float = Field(4.0, gt=0, description="cap on the repeats of any source; the rest of its share "
                                                      "goes to the other sources")
    seed: int = Field(0, ge=0, description="seed of the sampling and of the global order")
    rehydration: RehydrationConfig = RehydrationConfig()

    @field_validator("weights")
    @classmethod
    def _weights_non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        for source, weight in weights.items():
            if weight < 0:
                raise ValueError(f"weight of {source!r} must be >= 0, got {weight}")
        if weights and not any(weights.values()):
            raise ValueError("at least one weight must be positive")
        return weights


class ModelConfig(Section):
    """The architecture trained from scratch: a family, a preset of it, and any size field overridden
    (model/families.py). CPT and IFT from a checkpoint directory take the checkpoint's own architecture."""

    family: Literal["gpt2", "llama"] = Field(
        "llama", description="gpt2: GPT-2 (learned positions, LayerNorm, GELU); llama: RoPE, RMSNorm, SwiGLU, "
                             "grouped-query attention, no biases")
    preset: str = Field("llama-125m", description="gpt2-tiny | gpt2-124m | gpt2-350m | gpt2-774m | llama-tiny | "
                                                   "llama-125m | llama-350m | llama-1b")
    n_layer: int | None = Field(None, ge=1, le=256)
    n_head: int | None = Field(None, ge=1, le=256)
    n_kv_head: int | None = Field(None, ge=1, le=256, description="llama: key/value heads (grouped-query attention)")
    d_model: int | None = Field(None, ge=8, le=65536)
    d_ff: int | None = Field(None, ge=8, le=1 << 20, description="the MLP's inner width (llama: SwiGLU)")
    n_positions: int | None = Field(None, ge=8, le=1 << 20)
    rope_theta: float | None = Field(None, gt=0, description="llama: the RoPE base")
    tie_embeddings: bool | None = Field(None, description="llama: share the output projection with the embedding")

    @model_validator(mode="after")
    def _preset_of_family(self) -> "ModelConfig":
        from model.families import PRESETS, check_size

        if self.preset not in PRESETS:
            hint = f"; did you mean gpt2-{self.preset}?" if f"gpt2-{self.preset}" in PRESETS else ""
            raise ValueError(f"preset {self.preset!r} is unknown; allowed: {', '.join(PRESETS)}{hint}")
        if PRESETS[self.preset]["family"] != self.family:
            raise ValueError(f"preset {self.preset!r} is of family {PRESETS[self.preset]['family']!r}, not "
                             f"{self.family!r}; allowed for {self.family}: "
                             f"{', '.join(p for p, v in PRESETS.items() if v['family'] == self.family)}")
        if self.family == "gpt2":
            wrong = [name for name in ("n_kv_head", "rope_theta") if getattr(self, name) is not None]
            if wrong:
                raise ValueError(f"{wrong[0]} is a llama setting; GPT-2 has none")
        check_size(self.size())
        return self

    def size(self) -> dict[str, Any]:
        """The family and every size field: the preset's, with the overrides that are set."""
        from model.families import resolve_size

        overrides = {name: getattr(self, name) for name in ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff",
                                                             "n_positions", "rope_theta", "tie_embeddings")}
        return resolve_size(self.preset, overrides)


class ConcurrencyLimitConfig(Section):
    """The Prefect global concurrency limit a training flow run holds a slot of while it trains."""

    name: str | None = Field("gpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                             description="the limit's name; null: training runs take no slot")
    slots: int = Field(1, ge=1, le=10_000, description="training runs at once (the limit `make up` creates or updates)")


class TrainConfig(Section):
    """Training with DeepSpeed: processes, the optimisation, checkpoints, where it runs.

    Versioning rule: a setting that changes what is trained (the global batch: processes x micro_batch x
    grad_accum; precision; ZeRO stage; the optimisation; the seed) is part of the training stages' artifact
    versions; a setting that only changes how or where it runs (launcher, hostfile, threads, accelerator,
    work_dir, how often to log, checkpoint or validate; nodes and rdzv_endpoint, since processes holds the ranks in
    all) is not: a resume is exact, so it cannot change the weights.
    """

    processes: int = Field(1, ge=1, le=4096,
                           description="ranks in all (GPUs, or CPU processes); with a hostfile, the sum of its slots")
    launcher: Literal["auto", "deepspeed", "torchrun"] = Field(
        "auto", json_schema_extra=UNVERSIONED,
        description="auto: no launcher for one process, else DeepSpeed's; a hostfile always uses DeepSpeed's",
    )
    hostfile: str | None = Field(None, json_schema_extra=UNVERSIONED,
                                 description="DeepSpeed hostfile for several nodes (`host slots=N` per line)")
    nodes: int = Field(1, ge=1, le=1024, json_schema_extra=UNVERSIONED,
                       description="nodes of a torchrun c10d rendezvous (train.processes / nodes ranks each); node 0 "
                                   "runs the stage, the others `pretrain-pipeline train-node`")
    rdzv_endpoint: str | None = Field(None, json_schema_extra=UNVERSIONED,
                                      description="host:port of the rendezvous on node 0 (with train.nodes > 1)")
    accelerator: Literal["cpu", "cuda"] = Field("cpu", json_schema_extra=UNVERSIONED,
                                                description="DS_ACCELERATOR: cpu (gloo) here, cuda on GPUs")
    threads_per_process: int = Field(1, ge=1, le=256, json_schema_extra=UNVERSIONED,
                                     description="OMP_NUM_THREADS of each rank on CPU")
    micro_batch: int = Field(8, ge=1, description="sequences per rank per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    steps: int | Literal["auto"] = Field("auto", description="optimizer steps; auto: one pass over the mixture's order")
    lr: float = Field(6e-4, gt=0)
    min_lr: float = Field(6e-5, ge=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0, description="on the block matrices only")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    clip: float = Field(1.0, ge=0, description="gradient clipping by global norm; 0 disables")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: mixed precision with fp32 master weights (the export holds the fp32 masters)")
    zero_stage: int = Field(1, ge=0, le=3)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(100, ge=1, json_schema_extra=UNVERSIONED,
                                  description="steps between checkpoints (kept in the artifact store)")
    keep_checkpoints: int = Field(2, ge=0, json_schema_extra=UNVERSIONED,
                                  description="the newest checkpoints kept (older ones are deleted); 0 keeps all")
    eval_every: int = Field(0, ge=0, json_schema_extra=UNVERSIONED,
                            description="steps between validation losses (on held-out sequences); 0: never")
    eval_sequences: int = Field(64, ge=1, json_schema_extra=UNVERSIONED,
                                description="held-out sequences each validation scores")
    log_every: int = Field(10, ge=1, json_schema_extra=UNVERSIONED)
    peak_tflops: float | None = Field(
        None, gt=0, json_schema_extra=UNVERSIONED,
        description="the accelerator's peak TFLOP/s per rank for MFU; null: a known GPU's datasheet bf16 figure, "
                    "else a matrix multiply measured on the device at start",
    )
    work_dir: str | None = Field(None, json_schema_extra=UNVERSIONED,
                                 description="local space for token shards and checkpoints; default: system temp")
    work_pool: str | None = Field(
        None, json_schema_extra=UNVERSIONED,
        description="run each training stage as a flow run of the pretrain-pipeline/train deployment, which must be "
                    "on this work pool (e.g. a GPU pool); null: in the pipeline's own flow run")
    work_queue: str | None = Field(None, json_schema_extra=UNVERSIONED,
                                   description="the work pool's queue for those runs; null: the deployment's default")
    job_variables: dict[str, Any] = Field(
        {}, json_schema_extra=UNVERSIONED,
        description="the work pool's job variables for those runs (e.g. image, gpus, node_selector: whatever the "
                    "pool's base job template declares)")
    concurrency_limit: ConcurrencyLimitConfig = Field(ConcurrencyLimitConfig(), json_schema_extra=UNVERSIONED)

    stream: bool = Field(True, json_schema_extra=UNVERSIONED,
                         description="read the token shards from the artifact store while training, through a "
                                     "bounded cache per rank (cache_gb); false: download them all before the first step")
    cache_gb: float = Field(20.0, gt=0, json_schema_extra=UNVERSIONED,
                            description="local disk for streamed token shards, per rank (at least the largest shard)")

    @model_validator(mode="after")
    def _pool_settings_need_a_pool(self) -> "TrainConfig":
        for name in ("work_queue", "job_variables"):
            if getattr(self, name) and not self.work_pool:
                raise ValueError(f"{name} applies to training on a work pool: set train.work_pool too")
        return self

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint_parses(cls, value: str | None) -> str | None:
        from model.launch import parse_endpoint

        if value is not None:
            try:
                parse_endpoint(value)
            except ValueError:
                raise ValueError("expected host:port of node 0, e.g. train-0.train:29400") from None
        return value

    @model_validator(mode="after")
    def _one_multi_node_route(self) -> "TrainConfig":
        """Several nodes: a DeepSpeed hostfile, or torchrun's rendezvous (nodes, rdzv_endpoint, a shared work_dir)."""
        if self.nodes == 1:
            if self.rdzv_endpoint is not None:
                raise ValueError("train.rdzv_endpoint is set but train.nodes is 1: set train.nodes to the number of "
                                 "nodes, or remove train.rdzv_endpoint")
            return self
        problems = []
        if self.hostfile is not None:
            problems.append("train.hostfile and train.nodes > 1 are two routes to several nodes: use one (the "
                            "hostfile with DeepSpeed's launcher, or nodes + rdzv_endpoint with torchrun)")
        if self.launcher == "deepspeed":
            problems.append("train.launcher must be auto or torchrun with train.nodes > 1 (torchrun's rendezvous)")
        if self.rdzv_endpoint is None:
            problems.append("train.rdzv_endpoint (host:port of node 0) is required with train.nodes > 1")
        if self.processes % self.nodes:
            problems.append(f"train.processes (ranks in all, {self.processes}) must be a multiple of train.nodes "
                            f"({self.nodes})")
        if self.work_dir is None:
            problems.append("train.work_dir is required with train.nodes > 1: a directory every node mounts at the "
                            "same path (the run spec, token shards and checkpoints are written there)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("hostfile")
    @classmethod
    def _hostfile_exists(cls, value: str | None, info: Any) -> str | None:
        """Relative to pipeline.yaml's directory; made absolute, so the launcher finds it from anywhere."""
        if value is None:
            return value
        base = Path((info.context or {}).get("base_dir") or ".")
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise ValueError(f"no such hostfile: {path}")
        return str(path.resolve())


class PhaseTrainingConfig(Section):
    """The optimisation of a training phase after pretraining; everything else comes from `train:`."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate, re-warmed from zero")
    min_lr: float = Field(3e-5, ge=0)
    warmup_steps: int = Field(10, ge=0)
    steps: int | Literal["auto"] = Field("auto", description="optimizer steps; auto: one pass over the phase's order")
    micro_batch: int | None = Field(None, ge=1, description="default: train.micro_batch")

    def train_settings(self, base: "TrainConfig") -> "TrainConfig":
        update = {"lr": self.lr, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps, "steps": self.steps}
        if self.micro_batch is not None:
            update["micro_batch"] = self.micro_batch
        return base.model_copy(update=update)


class CptConfig(PhaseTrainingConfig):
    """Continued pretraining on the domain sources, with replay of general data."""

    enabled: bool = Field(False, json_schema_extra=UNVERSIONED)
    init: str = Field(
        "pretrain", json_schema_extra=UNVERSIONED,  # the version follows the checkpoint's files' sha256, not its path
        description="pretrain: the pretrain artifact; or a transformers checkpoint directory (config.json, "
                    "safetensors weights, tokenizer.json) of a supported family (gpt2, llama, mistral, qwen2), local "
                    "(relative to pipeline.yaml) or s3://bucket/prefix/; its tokenizer then tokenizes the data")
    replay_fraction: float = Field(0.2, ge=0, lt=1, description="share of CPT sequences drawn from general sources")
    budget_tokens: int = Field(1_000_000, ge=1, description="training tokens of the phase (domain + replay)")
    max_epochs: float = Field(4.0, gt=0, description="cap on the repeats of any source")
    seed: int = Field(0, ge=0, description="seed of the sampling and of the order")


class LoraConfig(Section):
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: Literal["auto"] | list[str] = Field(
        "auto", description="auto: every linear layer of the blocks (attention and MLP projections, PEFT's "
                            "all-linear); or module names, e.g. [q_proj, v_proj] (llama) or [c_attn] (gpt2)")

    @field_validator("targets")
    @classmethod
    def _targets_named(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or not all(re.fullmatch(r"[A-Za-z_][\w.]*", name) for name in value)):
            raise ValueError("a non-empty list of module names, or auto")
        return value


class IftConfig(PhaseTrainingConfig):
    """Instruction fine-tuning on chat JSONL (see README: chat format)."""

    enabled: bool = Field(False, json_schema_extra=UNVERSIONED)
    init: str = Field(
        "auto", json_schema_extra=UNVERSIONED,
        description="auto: the CPT model (or the pretrained one when cpt is off); or, with cpt off, a transformers "
                    "checkpoint directory (local or s3://) to fine-tune, whose tokenizer and chat template are used")
    chat_files: list[str] = Field([], description="JSONL or .jsonl.zst files (or glob patterns) of conversations; "
                                                  "relative to pipeline.yaml's directory")
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="conversations held out, by a hash of their content")
    max_line_mb: float = Field(4.0, gt=0, description="longer lines are quarantined as line_too_long unread")
    epochs: float = Field(3.0, gt=0, description="passes over the training conversations (steps: auto)")
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = LoraConfig()
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    seed: int = Field(0, ge=0)


class GeneratedTasksConfig(Section):
    """Harness tasks generated from held-out documents (the tokenize stage's validation split, as read for
    bits per byte): heldout_cloze and heldout_last_word (corpus/eval_tasks.py)."""

    languages: list[str] = Field(["en"], description="document languages used (the tasks split on spaces)")
    cloze_items: int = Field(500, ge=0, description="0 disables the cloze task")
    cloze_choices: int = Field(4, ge=2, le=16, description="the true continuation and distractors from other documents")
    cloze_context_words: int = Field(40, ge=1)
    cloze_continuation_words: int = Field(4, ge=1)
    cloze_stride_words: int = Field(8, ge=1, description="words between the positions of a document's items")
    last_word_items: int = Field(200, ge=0, description="0 disables the LAMBADA-style task")
    last_word_context_words: int = Field(60, ge=1)
    seed: int = Field(0, ge=0)

    def task_names(self) -> list[str]:
        return (["heldout_cloze"] if self.cloze_items else []) + (["heldout_last_word"] if self.last_word_items else [])


class HeldOutConfig(Section):
    """Bits per byte and perplexity on each source's held-out documents, tokenized by each model's own
    tokenizer (model/scoring.py)."""

    max_bytes_per_source: int = Field(
        1_000_000, ge=1, description="UTF-8 bytes of held-out text scored per source (documents in order, the last "
                                     "one cut at this budget)")
    window: int | None = Field(None, ge=2, description="tokens per forward pass; null: the model's context")
    stride: int | None = Field(
        None, ge=1, description="tokens a window advances over a long document (each token is scored once, with at "
                                "least window - stride tokens of context after the first window); null: the window")

    @model_validator(mode="after")
    def _stride_within_window(self) -> "HeldOutConfig":
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window})")
        return self


class GateTaskCheck(Section):
    """A task metric the candidate must not worsen by more than `tolerance` (absolute, in the metric's unit)."""

    task: str = Field(min_length=1, description="a task (or group) the eval runs, e.g. hellaswag")
    metric: str = Field(min_length=1, description="one of its harness metrics, e.g. acc_norm")
    tolerance: float = Field(0.0, ge=0)


class GateConfig(Section):
    """Which model becomes the `ref`, against the model the ref points at (or the base if the ref is unset):
    domain bits per byte must fall, general bits per byte may rise at most `general_tolerance`
    (relative), each of `tasks` may worsen at most its tolerance, and the held-out domain text must
    hold at least `min_domain_tokens` tokens."""

    enabled: bool = Field(True)
    ref: str = Field("current", pattern=r"^[A-Za-z0-9._\-/]+$")
    general_tolerance: float = Field(0.05, ge=0, description="allowed relative rise of general bits per byte")
    min_domain_tokens: int = Field(
        2000, ge=0, description="held-out domain tokens (candidate's tokenizer) below which the gate does not promote")
    tasks: list[GateTaskCheck] = Field([], description="task metrics that must not fall (rise, if lower is better)")


class EvalConfig(Section):
    """Evaluation of the base, CPT and IFT models on lm-evaluation-harness tasks and held-out text, and the
    promotion gate."""

    enabled: bool = Field(True, json_schema_extra=UNVERSIONED)
    tasks: list[str] = Field(
        [], description="lm-evaluation-harness task, group or tag names (hellaswag, arc_easy, mmlu, ...; their "
                        "datasets must be reachable or cached), and names defined by the YAMLs of include_path")
    include_path: list[str] = Field([], description="folders of local task YAMLs; relative to pipeline.yaml's "
                                                    "directory")
    limit: int | None = Field(None, ge=1, description="at most this many items per task; null: all")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; null: each task's own default")
    bootstrap_iters: int = Field(1000, ge=0, description="the harness's bootstrap for the stderr of non-mean metrics")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="the dtype models are loaded in (auto: the checkpoint's)")
    device: str | None = Field(None, json_schema_extra=UNVERSIONED, description="cpu, cuda, cuda:1, ...; "
                                                                               "null: cuda if available, else cpu")
    batch_size: int = Field(16, ge=1, json_schema_extra=UNVERSIONED, description="sequences per forward pass")
    core_metric: Literal["acc", "acc_norm"] = Field("acc", description="the accuracy the CORE aggregate centres")
    heldout: HeldOutConfig = HeldOutConfig()
    max_chat_sequences: int = Field(256, ge=1, description="held-out IFT rows scored for the assistant loss")
    generated: GeneratedTasksConfig = GeneratedTasksConfig()
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _gate_tasks_are_evaluated(self) -> "EvalConfig":
        known = set(self.tasks) | set(self.generated.task_names())
        for index, check in enumerate(self.gate.tasks):
            if check.task not in known:
                raise ValueError(f"gate.tasks.{index}.task: {check.task!r} is not evaluated; allowed: the names in "
                                 f"eval.tasks and the generated tasks {sorted(known)}")
        return self


class RefreshConfig(Section):
    """The schedule of the `pretrain-pipeline/cpt-refresh` deployment (applied by `make up`) and the
    least new domain data a refresh trains on."""

    cron: str = Field("0 3 * * 1", json_schema_extra=UNVERSIONED, description="cron expression (5 fields)")
    timezone: str = Field("UTC", json_schema_extra=UNVERSIONED)
    active: bool = Field(False, json_schema_extra=UNVERSIONED,
                         description="false: the schedule is created paused; resume it in the UI or the CLI. "
                                     "`make up` keeps a resumed or paused schedule as it is unless this changes")
    min_new_tokens: int = Field(
        100_000, ge=0, json_schema_extra=UNVERSIONED,
        description="a refresh with fewer new domain training tokens (after dedup and filter) stops before cpt "
                    "and says so; 0: any new token is enough")

    @model_validator(mode="after")
    def _valid_schedule(self) -> "RefreshConfig":
        from pipeline.cron import cron_problem

        if reason := cron_problem(self.cron, self.timezone):
            raise ValueError(f"not a valid cron schedule ({self.cron!r}, timezone {self.timezone!r}): {reason}")
        return self


class FailedRunAlertConfig(Section):
    """The automation on a failed run of the pretrain-pipeline flow (any deployment, or none)."""

    enabled: bool = Field(True, json_schema_extra=UNVERSIONED)


class LateRefreshAlertConfig(Section):
    """The automation on a scheduled cpt-refresh run that did not start in time."""

    enabled: bool = Field(True, json_schema_extra=UNVERSIONED)
    within_seconds: int = Field(
        3600, ge=60, le=7 * 86400, json_schema_extra=UNVERSIONED,
        description="it fires when a cpt-refresh run marked Late (15 s after it was due) is not Pending or "
                    "Running this many seconds later")


class AlertsConfig(Section):
    """The Prefect automations `make up` creates (pipeline/alerts.py)."""

    failed_run: FailedRunAlertConfig = FailedRunAlertConfig()
    late_refresh: LateRefreshAlertConfig = LateRefreshAlertConfig()
    notify: str | None = Field(
        None, json_schema_extra=UNVERSIONED,
        description="a Prefect notification block, `<block type slug>/<block name>` (e.g. slack-webhook/data-eng), "
                    "that the automations send to; null: they fire without sending (the UI lists each firing)")

    @field_validator("notify")
    @classmethod
    def _block_slug(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9-]+/[A-Za-z0-9_.-]+", value):
            raise ValueError(f"{value!r} is not `<block type slug>/<block name>`, e.g. slack-webhook/data-eng")
        return value


class ClusterConfig(Section):
    """Where the data stages' work units run (pipeline/parallel.py). It changes no output: a stage gives
    the same version and the same bytes on every runner, so nothing here is versioned."""

    runner: Literal["local", "dask", "ray"] = Field(
        "local", json_schema_extra=UNVERSIONED,
        description="local: a process pool per stage (each stage's `workers`); dask or ray: every unit on the cluster")
    address: str | None = Field(
        None, json_schema_extra=UNVERSIONED,
        description="dask: tcp://host:8786; ray: ray://host:10001, host:6379 or auto; "
                    "null: start a local cluster bound to 127.0.0.1 for the flow run")
    workers: int = Field(2, ge=1, le=1024, json_schema_extra=UNVERSIONED,
                         description="worker processes of the local cluster (address null)")

    @field_validator("address")
    @classmethod
    def _address_fits_runner(cls, value: str | None, info: Any) -> str | None:
        if value is None or "runner" not in info.data:  # an invalid runner is reported on its own
            return value
        runner = info.data["runner"]
        value = value.strip()
        patterns = {
            "dask": (r"(?:(?:tcp|tls|ws|wss|ucx)://)?[^\s/:]+:\d{1,5}", "tcp://host:port (or tls://, ws://, ucx://)"),
            "ray": (r"auto|ray://[^\s/:]+:\d{1,5}|[^\s/:]+:\d{1,5}", "ray://host:port (Ray Client), host:port or auto"),
        }
        if runner not in patterns:
            raise ValueError(f"runner {runner!r} takes no address (set cluster.runner to dask or ray, or leave "
                             f"the address null)")
        pattern, expected = patterns[runner]
        if not re.fullmatch(pattern, value):
            raise ValueError(f"not a {runner} address; expected {expected}, or null for a local cluster")
        return value


DATA_ONLY_HINT = " (for the data stages only, set stop_after: tokens, or filter)"
# The stages in DAG order (flows/dag.py runs them), for `stop_after`.
PIPELINE_STAGES = ("ingest", "clean", "langid", "dedup", "filter", "tokenizer", "tokens", "mixture", "pretrain", "cpt",
                   "ift", "eval")


class PipelineConfig(Section):
    storage: StorageConfig = StorageConfig()
    sources: list[Source] = Field(min_length=1)
    stop_after: Literal[PIPELINE_STAGES] | None = Field(  # type: ignore[valid-type]
        None, json_schema_extra=UNVERSIONED,
        description="the last stage a run executes (e.g. filter or tokens for the data stages only); the "
                    "sections of the stages after it are then not checked; null: the whole DAG",
    )
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    langid: LangidConfig = LangidConfig()
    dedup: DedupConfig = DedupConfig()
    filter: FilterConfig = FilterConfig()
    quality_model: QualityModelConfig = QualityModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    mixture: MixtureConfig = MixtureConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    cpt: CptConfig = CptConfig()
    ift: IftConfig = IftConfig()
    eval: EvalConfig = EvalConfig()
    refresh: RefreshConfig = RefreshConfig()
    alerts: AlertsConfig = AlertsConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _unique_source_names(self) -> "PipelineConfig":
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"sources: duplicate source name {source.name!r}; names must be unique")
            seen.add(source.name)
        checked = [("clean.extractor_by_source", self.clean.extractor_by_source),
                   ("filter.per_source", self.filter.per_source)]
        if self.runs("mixture"):
            checked.append(("mixture.weights", self.mixture.weights))
        for key, mapping in checked:
            unknown = sorted(set(mapping) - seen)
            if unknown:
                hint = DATA_ONLY_HINT if key == "mixture.weights" else ""
                raise ValueError(f"{key}: no source named {unknown}; sources: {sorted(seen)}{hint}")
        return self

    @model_validator(mode="after")
    def _model_fits(self) -> "PipelineConfig":
        sizes = self.model.size()
        if self.runs("pretrain") and self.base_checkpoint() is None and sizes["n_positions"] < self.tokenize.seq_len:
            raise ValueError(f"tokenize.seq_len {self.tokenize.seq_len} exceeds the model's n_positions "
                             f"{sizes['n_positions']}")
        if self.cpt.enabled and self.ift.enabled and self.ift.init != "auto":
            raise ValueError(f"ift.init: with cpt enabled IFT continues from CPT's model; set ift.init: auto, or "
                             f"disable cpt to fine-tune {self.ift.init!r} directly")
        return self

    def base_checkpoint(self) -> str | None:
        """The user's checkpoint the model phases start from (cpt.init or ift.init), or None (pretraining)."""
        if self.cpt.enabled and self.cpt.init != "pretrain":
            return self.cpt.init
        if not self.cpt.enabled and self.ift.enabled and self.ift.init != "auto":
            return self.ift.init
        return None

    @model_validator(mode="after")
    def _phases_have_data(self) -> "PipelineConfig":
        general = [source.name for source in self.sources if source.role == "general"]
        if self.runs("mixture"):
            if not general:
                raise ValueError("sources: at least one source needs role: general (pretraining reads those)")
            domain_weighted = sorted(set(self.mixture.weights) - set(general))
            if domain_weighted:
                raise ValueError(f"mixture.weights: {domain_weighted} have role: domain; pretraining's mixture reads "
                                 f"the general sources {general} (domain sources are read by cpt)")
        if self.runs("cpt") and self.cpt.enabled and not self.domain_sources():
            raise ValueError("cpt.enabled: continued pretraining needs at least one source with role: domain"
                             + DATA_ONLY_HINT)
        if self.runs("ift") and self.ift.enabled and not self.ift.chat_files:
            raise ValueError("ift.chat_files: instruction fine-tuning needs at least one chat JSONL file or pattern")
        return self

    def runs(self, stage: str) -> bool:
        """Whether a run gets as far as `stage` (stop_after)."""
        return self.stop_after is None or PIPELINE_STAGES.index(stage) <= PIPELINE_STAGES.index(self.stop_after)

    def domain_sources(self) -> list[str]:
        return [source.name for source in self.sources if source.role == "domain"]

    def general_sources(self) -> list[str]:
        return [source.name for source in self.sources if source.role == "general"]

    def source(self, name: str) -> WarcSource | JsonlSource | HtmlSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"no source named {name!r}; configured: {', '.join(s.name for s in self.sources)}")


# ---------------------------------------------------------------------------------------------
# Loading, overrides and readable errors


def load_config(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> PipelineConfig:
    """Read pipeline.yaml, apply overrides, validate (relative paths in it against its directory). Raises
    ConfigError on any problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides)
    return validate_config(raw, origin=str(path), base_dir=path.resolve().parent)


def validate_config(raw: dict[str, Any], origin: str = "config", base_dir: Path | None = None) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw, context={"base_dir": str(base_dir or Path.cwd())})
    except ValidationError as exc:
        lines = [format_error(err) for err in exc.errors()]
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` or `{"a.b": 1}` -> `{"a.b": 1, "c": "x"}` (values parsed as YAML)."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. ingest.workers=4")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Set dotted keys in a copy of the raw config. A list element is addressed by index or by its `name`."""
    import copy

    result = copy.deepcopy(raw)
    for dotted, value in parse_overrides(overrides).items():
        parts = dotted.split(".")
        node: Any = result
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                index = _list_index(node, part, where)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {dotted}: {'.'.join(parts[:depth])} is a value, not a section")
    return result


def _list_index(node: list, part: str, where: str) -> int:
    if part.isdigit():
        if int(part) >= len(node):
            raise ConfigError(f"override {where}: index out of range (the list has {len(node)} items)")
        return int(part)
    for index, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return index
    names = [item.get("name") for item in node if isinstance(item, dict)]
    raise ConfigError(f"override {where}: no item named {part!r}; allowed: an index or one of {names}")


def format_error(err: dict[str, Any]) -> str:
    """One pydantic error as `dotted.path: problem (allowed: ...)`."""
    loc = [part for index, part in enumerate(err["loc"]) if not _is_kind_tag(err["loc"], index)]
    path = ".".join(str(part) for part in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return f"{path}: unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "union_tag_invalid":
        return f"{path}: {err['msg']}".replace("'kind'", "kind")
    message = err["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if not loc or isinstance(err.get("input"), dict):  # a check across keys: the message names them
        return f"{path}: {message}"
    return f"{path}: {message} (got {err.get('input')!r})"


def _is_kind_tag(loc: tuple, index: int) -> bool:
    """pydantic puts the union tag in the path of a source's errors: sources.0.<kind>.field."""
    return index >= 2 and loc[index - 2] == "sources" and isinstance(loc[index - 1], int) \
        and loc[index] in SOURCE_KINDS


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = PipelineConfig
    for index, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if _is_kind_tag(loc, index):
            model = SOURCE_KINDS[part]
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        if part == "sources":
            model = None
            continue
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []
