"""The MLX backend through the real mlx-lm code path, on a tiny random model."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest

from cicdllm_assets.llm import mlx_backend
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest, LLMBackend, RequestFeed
from cicdllm_assets.llm.mlx_backend import SHARED_PREFIX_MIN, MLXBackend, prefill_group, release_models
from tests.llm_fixtures import make_tiny_model_dir, tiny_model_dir

__all__ = ["tiny_model_dir"]

SYSTEM = ChatMessage("system", "You write questions and answers about code.")
CHUNKS = [
    "def add(a, b):\n    return a + b\n" * 6,
    "class Parser:\n    def parse(self, text: str) -> list[str]:\n        return text.split()\n" * 4,
]
QUESTIONS = ["What does this return?", "Why is it split?", "Name a function.", "What is the class for?"]


def _requests(prefix_messages: int = 2, max_tokens: int = 6, temperature: float = 0.0) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            key=f"{c}-{q}",
            messages=(SYSTEM, ChatMessage("user", f"Code:\n{chunk}"), ChatMessage("user", question)),
            max_tokens=max_tokens,
            temperature=temperature,
            seed=7,
            prefix_messages=prefix_messages,
        )
        for c, chunk in enumerate(CHUNKS)
        for q, question in enumerate(QUESTIONS)
    ]


@pytest.fixture
def backend(tiny_model_dir: Path) -> MLXBackend:
    release_models()  # no prefix cache carried over from another test
    return MLXBackend(str(tiny_model_dir), batch_size=4)


def test_batch_returns_one_result_per_request_with_counts(backend: MLXBackend) -> None:
    assert isinstance(backend, LLMBackend)
    requests = _requests()
    results = list(backend.generate(requests))
    assert sorted(r.key for r in results) == sorted(r.key for r in requests)
    for result in results:
        assert result.ok, result.error
        assert 1 <= result.completion_tokens <= 6
        assert result.finish_reason in ("stop", "length")
        assert result.latency_ms > 0
    by_key = {r.key: r for r in results}
    for request in requests:
        assert by_key[request.key].prompt_tokens == backend.count_prompt_tokens(request.messages)
    assert backend.stats.requests == len(requests)
    assert backend.stats.completion_tokens == sum(r.completion_tokens for r in results)


def test_prefix_reuse_processes_fewer_prompt_tokens(tiny_model_dir: Path) -> None:
    release_models()
    without = MLXBackend(str(tiny_model_dir), batch_size=4, prefix_reuse=False)
    plain = list(without.generate(_requests()))
    release_models()
    reuse = MLXBackend(str(tiny_model_dir), batch_size=4)
    shared = list(reuse.generate(_requests()))

    total = sum(r.prompt_tokens for r in plain)
    assert sum(r.prompt_tokens for r in shared) == total
    assert without.stats.processed_prompt_tokens == total
    assert all(r.cached_prompt_tokens == 0 for r in plain)
    # Each chunk's prefix is prefilled once, the system prompt both start with once: the first
    # request pays for both, the other chunk's first for its own part; the rest reuse them.
    prefix = {r.key: len(reuse._template(r.messages[:2], False)) for r in _requests()}
    share = [r.cached_prompt_tokens / prefix[r.key] for r in sorted(shared, key=lambda r: r.key)]
    assert share.count(1.0) == len(shared) - len(CHUNKS)
    assert sorted(share)[0] == 0.0 and 0.0 < sorted(share)[1] < 1.0
    processed = reuse.stats.processed_prompt_tokens
    # Our accounting agrees with what mlx_lm's BatchGenerator says it prefilled (plus the
    # prefix prefills and each request's last prompt token, fed with its first decode step).
    for backend in (without, reuse):
        stats = backend.stats
        assert stats.processed_prompt_tokens == (
            stats.prefix_prefill_tokens + stats.batch_prefill_tokens + stats.requests
        )
    assert processed == total - sum(r.cached_prompt_tokens for r in shared)
    assert processed < 0.6 * total
    # Reuse must not change what greedy decoding produces.
    assert {r.key: r.text for r in shared} == {r.key: r.text for r in plain}


def test_prefix_cache_survives_between_calls(backend: MLXBackend) -> None:
    list(backend.generate(_requests()[:1]))
    again = list(backend.generate(_requests()[1:2]))
    assert again[0].cached_prompt_tokens > 0


def test_greedy_and_seeded_sampling_are_deterministic(backend: MLXBackend) -> None:
    greedy_a = {r.key: r.text for r in backend.generate(_requests(temperature=0.0))}
    greedy_b = {r.key: r.text for r in backend.generate(_requests(temperature=0.0))}
    assert greedy_a == greedy_b
    sampled_a = {r.key: r.text for r in backend.generate(_requests(temperature=1.0))}
    # A different batch composition (one at a time) must not change seeded samples.
    sampled_b = {}
    for request in _requests(temperature=1.0):
        sampled_b.update({r.key: r.text for r in backend.generate([request])})
    assert sampled_a == sampled_b


def test_context_window_from_config_and_override(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert MLXBackend(str(tiny_model_dir)).context_window == 2048
    assert MLXBackend(str(tiny_model_dir), context_window=512).context_window == 512
    other = make_tiny_model_dir(tmp_path / "m")
    config = json.loads((other / "config.json").read_text())
    config["max_position_embeddings"] = 1024
    (other / "config.json").write_text(json.dumps(config))
    assert MLXBackend(str(other)).context_window == 1024


def test_overflow_and_max_tokens_are_bounded_by_context(tiny_model_dir: Path) -> None:
    backend = MLXBackend(str(tiny_model_dir), context_window=300)
    huge = GenerationRequest(key="big", messages=(ChatMessage("user", "x = 1\n" * 400),), max_tokens=8)
    small = GenerationRequest(key="small", messages=(ChatMessage("user", "hi"),), max_tokens=4)
    results = {r.key: r for r in backend.generate([huge, small])}
    assert results["big"].error is not None
    assert results["big"].error.category == "context_overflow"
    assert results["small"].ok


def test_count_tokens(backend: MLXBackend) -> None:
    assert backend.count_tokens("") == 0
    assert backend.count_tokens("def add(a, b):") > 0
    messages = (ChatMessage("user", "hello"),)
    assert backend.count_prompt_tokens(messages) > backend.count_tokens("hello")


def test_model_is_loaded_once_per_process(tiny_model_dir: Path) -> None:
    release_models()
    before = mlx_backend.load_count
    first = MLXBackend(str(tiny_model_dir))
    second = MLXBackend(str(tiny_model_dir))
    first.count_tokens("a")  # token counting needs no weights
    assert mlx_backend.load_count == before
    list(first.generate(_requests()[:1]))
    list(second.generate(_requests()[:2]))
    assert mlx_backend.load_count == before + 1
    release_models()
    list(MLXBackend(str(tiny_model_dir)).generate(_requests()[:1]))
    assert mlx_backend.load_count == before + 2


def test_unloadable_model_fails_requests_not_the_caller(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    backend = MLXBackend(str(broken))
    results = list(backend.generate(_requests()[:3]))
    assert len(results) == 3
    assert all(r.error is not None and r.error.category == "backend_error" for r in results)


class _FailOnce:
    """The real model, except that one forward pass raises (a fault injected mid-batch)."""

    def __init__(self, model: object, fail_at: int) -> None:
        self._model = model
        self._calls = 0
        self._fail_at = fail_at

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        self._calls += 1
        if self._calls == self._fail_at:
            raise RuntimeError("injected failure")
        return self._model(*args, **kwargs)  # type: ignore[operator]


def test_failure_mid_batch_fails_only_the_requests_in_flight(tiny_model_dir: Path) -> None:
    release_models()
    backend = MLXBackend(str(tiny_model_dir), batch_size=4, prefix_reuse=False)
    loaded = backend.loaded
    real_model = loaded.model
    loaded.model = _FailOnce(real_model, fail_at=3)
    try:
        results = list(backend.generate(_requests(max_tokens=4)))
    finally:
        loaded.model = real_model
    assert len(results) == len(_requests())
    failed = [r for r in results if not r.ok]
    assert failed and all(r.error is not None and r.error.category == "backend_error" for r in failed)
    assert len(failed) <= 4  # at most one batch
    assert sum(r.ok for r in results) >= len(results) - 4


def _varied_requests(n: int = 10, max_tokens: int = 12) -> list[GenerationRequest]:
    """Prompts of different lengths (so batches are padded) in two prefix groups."""
    return [
        GenerationRequest(
            key=f"v{i}",
            messages=(
                SYSTEM,
                ChatMessage("user", f"Code:\n{CHUNKS[i % 2]}"),
                ChatMessage("user", QUESTIONS[i % 4] + " Explain" * (i % 5)),
            ),
            max_tokens=max_tokens,
            temperature=0.0,
            prefix_messages=2,
        )
        for i in range(n)
    ]


def test_greedy_batched_matches_one_at_a_time(tiny_model_dir: Path) -> None:
    """Batching (padded prefills, batched prefix prefills, merged KV caches) leaves greedy
    outputs as decoding each request alone, without prefix reuse, gives them."""
    requests = _varied_requests()
    release_models()
    alone = MLXBackend(str(tiny_model_dir), batch_size=1, prefix_reuse=False)
    expected = {}
    for request in requests:
        expected.update({r.key: (r.text, r.completion_tokens) for r in alone.generate([request])})
    release_models()
    wide = MLXBackend(str(tiny_model_dir), batch_size=len(requests))
    got = {r.key: (r.text, r.completion_tokens) for r in wide.generate(requests)}
    assert got == expected
    # the system prompt both chunks' prefixes start with; both chunks' prefixes on it in one
    # forward pass; then, from copies of their caches, the longer prefixes of requests whose
    # questions start alike (nested on them) in another
    assert wide.stats.prefix_prefill_batches == 3
    bases = sum(len(wide._template(r.messages[:2], False)) for r in requests[:2])
    assert wide.stats.prefix_prefill_tokens > bases


CONTEXT = "Definitions used here:\n" + "".join(f"def helper_{i}(value: int) -> int: ...\n" for i in range(8))


def test_requests_sharing_a_context_after_their_prefix_prefill_it_once(tiny_model_dir: Path) -> None:
    """Requests of one prefix group whose suffixes start with the same context (an answer's repo
    context, before its question) share it: it is prefilled once per group, on a copy of the
    group's prefix cache, and greedy outputs stay those of plain prefill."""
    requests = [
        GenerationRequest(
            key=f"{c}-{q}",
            messages=(SYSTEM, ChatMessage("user", f"Code:\n{chunk}"), ChatMessage("user", f"{CONTEXT}\n{question}")),
            max_tokens=8,
            temperature=0.0,
            prefix_messages=2,
        )
        for c, chunk in enumerate(CHUNKS)
        for q, question in enumerate(QUESTIONS[:3])
    ]
    release_models()
    plain = MLXBackend(str(tiny_model_dir), batch_size=len(requests), prefix_reuse=False)
    expected = {r.key: r.text for r in plain.generate(requests)}
    release_models()
    nested = MLXBackend(str(tiny_model_dir), batch_size=len(requests))
    results = list(nested.generate(requests))
    assert {r.key: r.text for r in results} == expected
    context = len(nested.tokenizer.encode(CONTEXT, add_special_tokens=False))
    assert context >= SHARED_PREFIX_MIN
    prefix = {c: len(nested._template(requests[3 * c].messages[:2], False)) for c in range(len(CHUNKS))}
    # per chunk: its prefix once, the context once, each request's own question
    saved = plain.stats.processed_prompt_tokens - nested.stats.processed_prompt_tokens
    assert saved >= sum(2 * (prefix[c] + context) for c in prefix)
    # the system prompt the chunks' prefixes start with, the chunks' prefixes on it, the contexts on those
    assert nested.stats.prefix_prefill_batches == 3
    cached = sorted(r.cached_prompt_tokens for r in results if r.key.startswith("0-"))
    assert cached[0] == 0 and cached[1] == cached[2] > prefix[0] + context  # the first pays for both
    # the nested prefix's cache holds what a plain prefill of its tokens computes
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    base = tuple(nested._template(requests[0].messages[:2], False))
    tokens, cache = max(
        ((k[1], entry[0]) for k, entry in mlx_backend._prefix_cache._entries.items() if k[1][: len(base)] == base),
        key=lambda found: len(found[0]),
    )
    assert len(tokens) >= len(base) + context
    model = nested.loaded.model
    plain_cache = make_prompt_cache(model)
    model(mx.array([list(tokens)]), cache=plain_cache)
    for got, want in zip(cache, plain_cache, strict=True):
        assert got.offset == want.offset == len(tokens)
        for a, b in ((got.keys, want.keys), (got.values, want.values)):
            np.testing.assert_allclose(
                np.array(a[..., : len(tokens), :]), np.array(b[..., : len(tokens), :]), atol=1e-5
            )
    # the group's own prefix (system + chunk) stays cached for the chunk's other requests
    again = list(
        nested.generate(
            [
                dataclasses.replace(
                    requests[0],
                    key="again",
                    messages=(*requests[0].messages[:2], ChatMessage("user", "Another question?")),
                )
            ]
        )
    )
    assert again[0].cached_prompt_tokens == prefix[0]


def test_requests_sharing_a_system_prompt_prefill_it_once(tiny_model_dir: Path) -> None:
    """Without ``prefix_messages``, the tokens every prompt of a call starts with (here a
    system prompt) are prefilled once; greedy outputs stay those of plain prefill."""
    requests = [
        GenerationRequest(
            key=f"s{i}",
            messages=(SYSTEM, ChatMessage("user", QUESTIONS[i % 4] + " Explain" * i)),
            max_tokens=8,
            temperature=0.0,
        )
        for i in range(5)
    ]
    release_models()
    plain = MLXBackend(str(tiny_model_dir), batch_size=5, prefix_reuse=False)
    expected = {r.key: r.text for r in plain.generate(requests)}
    release_models()
    shared = MLXBackend(str(tiny_model_dir), batch_size=5)
    results = list(shared.generate(requests))
    assert {r.key: r.text for r in results} == expected
    prefix = len(shared._template((SYSTEM,), False))
    assert prefix >= SHARED_PREFIX_MIN
    assert shared.stats.prefix_prefill_batches == 1
    assert plain.stats.processed_prompt_tokens - shared.stats.processed_prompt_tokens >= 4 * prefix
    assert sum(1 for r in results if r.cached_prompt_tokens >= prefix) == 4
    # one request alone, or prompts sharing too little (another system prompt), get no prefix
    release_models()
    single = MLXBackend(str(tiny_model_dir), batch_size=5)
    list(single.generate(requests[:1]))
    assert single.stats.prefix_prefill_batches == 0
    other = GenerationRequest(
        key="other", messages=(ChatMessage("system", "Be brief."), requests[0].messages[1]), max_tokens=4
    )
    list(single.generate([requests[0], other]))
    assert single.stats.prefix_prefill_batches == 0


def test_auto_width_comes_from_the_model_and_memory(tiny_model_dir: Path) -> None:
    from cicdllm_assets.llm.batch_width import choose_width, model_shape

    release_models()
    backend = MLXBackend(str(tiny_model_dir))
    assert backend.batch_size == "auto"
    results = list(backend.generate(_varied_requests(6, max_tokens=4)))
    assert all(r.ok for r in results)
    choice = backend.last_width
    assert choice is not None
    shape = model_shape(backend.loaded.model, backend.loaded.config)
    longest = max(r.prompt_tokens for r in results) + 4
    assert choice.sequence_tokens == longest
    assert choice == choose_width(shape, longest, choice.available)
    with pytest.raises(ValueError, match="batch_size"):
        MLXBackend(str(tiny_model_dir), batch_size=0)


def test_requests_added_to_a_feed_join_the_running_batch(tiny_model_dir: Path, monkeypatch) -> None:
    """A request added to the feed while results stream (the engine's retry of an unusable
    reply) is decoded by the batch generator already running, and gives what it gives alone."""
    generate_module = importlib.import_module("mlx_lm.generate")  # mlx_lm.generate is also a function
    requests = _varied_requests(6, max_tokens=10)
    late = dataclasses.replace(requests[3], key="late")
    release_models()
    alone = MLXBackend(str(tiny_model_dir), batch_size=1, prefix_reuse=False)
    expected = next(iter(alone.generate([late])))

    generators: list[object] = []
    real = generate_module.BatchGenerator

    def counted(*args: object, **kwargs: object) -> object:
        generators.append(real(*args, **kwargs))
        return generators[-1]

    monkeypatch.setattr(generate_module, "BatchGenerator", counted)
    release_models()
    backend = MLXBackend(str(tiny_model_dir), batch_size=8)
    feed = RequestFeed(requests)
    results = []
    for result in backend.generate(feed):
        results.append(result)
        if len(results) == 1:
            feed.add(late)
    assert sorted(r.key for r in results) == sorted([*(r.key for r in requests), "late"])
    assert len(generators) == 1  # no second pass
    got = next(r for r in results if r.key == "late")
    assert (got.text, got.completion_tokens) == (expected.text, expected.completion_tokens)
    assert len(feed) == 0 and feed.taken == len(requests) + 1


def test_suffixes_are_prefilled_in_groups_of_similar_length(tiny_model_dir: Path, monkeypatch) -> None:
    """Requests entering together are prefilled longest first, in groups whose padding stays
    within :data:`PREFILL_PADDING` (here 1.0: a group holds prompts of one length)."""
    from mlx_lm.generate import PromptProcessingBatch

    requests = _varied_requests(10, max_tokens=4)  # the queue order is not the length order
    calls: list[list[int]] = []
    real_prompt = PromptProcessingBatch.prompt

    def recorded(self: PromptProcessingBatch, tokens: list[list[int]]) -> None:
        if tokens and max(len(t) for t in tokens) > 1:  # not the last token fed with the first decode step
            calls.append([len(t) for t in tokens])
        real_prompt(self, tokens)

    monkeypatch.setattr(PromptProcessingBatch, "prompt", recorded)
    monkeypatch.setattr(mlx_backend, "PREFILL_PADDING", 1.0)
    monkeypatch.setattr(mlx_backend, "PREFILL_GROUP_TOKENS", 1)
    release_models()
    backend = MLXBackend(str(tiny_model_dir), batch_size=len(requests), prefix_reuse=False)
    assert all(r.ok for r in backend.generate(requests))
    lengths = sorted((backend.count_prompt_tokens(r.messages) - 1 for r in requests), reverse=True)
    assert len(set(lengths)) >= 3
    assert [c[0] for c in calls] == sorted(set(lengths), reverse=True)  # one call per length, longest first
    assert [sorted(c) for c in calls] == [[n] * lengths.count(n) for n in sorted(set(lengths), reverse=True)]


def test_prefill_groups_trade_padding_for_forward_passes() -> None:
    # 27 answer suffixes from 251 down to 54 tokens: 3 groups pad 4,117 real tokens to 5,127
    # (one group: 6,777); prompts of one length, or fewer real tokens than a group's minimum, go together
    lengths = [round(251 - i * 197 / 26) for i in range(27)]
    groups = []
    while lengths:
        groups.append(lengths[: prefill_group(lengths)])
        lengths = lengths[len(groups[-1]) :]
    assert [len(g) for g in groups] == [14, 9, 4]
    assert sum(len(g) * g[0] for g in groups) <= 1.25 * sum(map(sum, groups))
    assert prefill_group([12] * 96) == 96
    assert prefill_group([300, 40, 30]) == 3  # 370 real tokens: below PREFILL_GROUP_TOKENS


def test_a_prefill_that_always_fails_fails_the_requests_instead_of_looping(tiny_model_dir: Path) -> None:
    """With nothing in flight, a failure (here every prefix prefill) fails the waiting requests
    rather than retrying them with a fresh generator forever."""
    import threading

    release_models()
    backend = MLXBackend(str(tiny_model_dir), batch_size=4)

    def broken(prefixes: object, processed: object = None) -> dict:
        raise MemoryError("no room for the prefix caches")

    backend._prefill_prefixes = broken  # type: ignore[method-assign]
    results: list = []
    worker = threading.Thread(target=lambda: results.extend(backend.generate(_requests())), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "generate kept retrying"
    assert sorted(r.key for r in results) == sorted(r.key for r in _requests())
    assert all(r.error is not None and r.error.category == "backend_error" for r in results)
    assert "no room for the prefix caches" in results[0].error.message


def test_prefix_batches_pad_to_512_tokens_at_most() -> None:
    """Short prefixes share a batch (up to 8); long ones go alone. Lengths: the demo's 8 chunk
    prefixes after the system prompt, then short ones."""
    demo = [417, 412, 392, 312, 292, 283, 255, 204]
    sizes = []
    while demo:
        sizes.append(mlx_backend.prefix_group(demo))
        demo = demo[sizes[-1] :]
    assert sizes == [1, 1, 1, 1, 1, 1, 2]  # 255 and 204 pad to 510 <= PREFIX_BATCH_TOKENS
    assert mlx_backend.prefix_group([60] * 10) == mlx_backend.PREFIX_PREFILL_WIDTH
    assert mlx_backend.prefix_group([200, 150, 100]) == 2  # a third would pad to 600
    assert mlx_backend.prefix_group([900]) == 1


def test_prefix_batches_count_only_the_tokens_a_prefill_processes(backend: MLXBackend) -> None:
    """A prefix extending a cached one counts only its own tokens: 430 tokens on a cached 400
    (30 to process) and 200 fresh ones share a batch (200 x 2 <= 512), the fresh one first."""
    base = tuple(range(10, 410))
    backend._prefill_prefixes([base])
    extends, fresh = (*base, *range(500, 530)), tuple(range(600, 800))
    assert [backend._to_process(p) for p in (extends, fresh, base)] == [30, 200, 0]
    assert list(backend._prefix_batches([extends, fresh])) == [[fresh, extends]]


def test_missing_prefixes_are_prefilled_longest_first_in_batches_of_512_tokens(
    tiny_model_dir: Path, monkeypatch
) -> None:
    """Twelve chunks of different lengths: their prefixes go longest first, in batches padded to
    512 tokens at most, so a batch pads its prefixes to a length close to theirs (after the
    system prompt they share)."""
    release_models()
    backend = MLXBackend(str(tiny_model_dir), batch_size=32)
    requests = [
        GenerationRequest(
            key=f"c{i}",
            messages=(
                SYSTEM,
                ChatMessage("user", "Code:\n" + "x = 1\n" * (2 + (i * 7) % 12)),
                ChatMessage("user", "Why?"),
            ),
            max_tokens=2,
            temperature=0.0,
            prefix_messages=2,
        )
        for i in range(12)
    ]
    batches: list[list[int]] = []
    original = backend._prefill_prefixes

    def recording(prefixes, processed=None):  # type: ignore[no-untyped-def]
        batches.append([len(p) for p in prefixes])
        return original(prefixes, processed)

    monkeypatch.setattr(backend, "_prefill_prefixes", recording)
    assert all(r.ok for r in backend.generate(requests))
    root, *groups = batches  # the system prompt first, then the chunks' prefixes on it
    assert len(root) == 1 and [len(b) for b in groups] == [7, 5]  # 8 of the longest pad past 512
    assert all(len(b) * (max(b) - root[0]) <= mlx_backend.PREFIX_BATCH_TOKENS for b in groups)
    lengths = [n for b in groups for n in b]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) > 2
