"""GET /metrics on the real façade in front of real engines: after known traffic it shows
exactly what was sent, and the real `promtool check metrics` accepts the live page."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engines import Engine
from tests.facade import run_facade
from vllama import __version__

pytestmark = [pytest.mark.engine, pytest.mark.timeout(180, func_only=True)]

CHAT = "vllama-demo"
EMBED = "all-minilm"
Sample = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(scope="module")
def facade(chat_engine: Engine, embed_engine: Engine) -> Iterator[str]:
    """A façade of our own: the shared one's counters see every other module's traffic."""
    with run_facade(
        engines=[{"url": chat_engine.url}, {"url": embed_engine.url}], log_format="json"
    ) as url:
        yield url


def scrape(url: str) -> tuple[str, dict[Sample, float]]:
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    return r.text, samples


def get(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counts_after_known_traffic(
    facade: str, chat_engine: Engine, request: pytest.FixtureRequest
) -> None:
    _, before = scrape(facade)
    oc = ollama.Client(host=facade, timeout=60)
    oa = openai.OpenAI(base_url=f"{facade}/v1", api_key="unused", timeout=60, max_retries=0)
    request.addfinalizer(oc.close)
    request.addfinalizer(oa.close)
    prompt = completion = 0
    for seed in (1, 2):
        r = oc.chat(
            model=CHAT,
            messages=[{"role": "user", "content": "hi"}],
            options={"num_predict": 4, "seed": seed, "temperature": 0},
        )
        prompt += r.prompt_eval_count or 0
        completion += r.eval_count or 0
    parts = list(
        oc.generate(model=CHAT, prompt="once", stream=True, options={"num_predict": 5, "seed": 1})
    )
    prompt += parts[-1].prompt_eval_count or 0
    completion += parts[-1].eval_count or 0
    chunks = list(
        oa.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    prompt += usage.prompt_tokens
    completion += usage.completion_tokens
    oa.embeddings.create(model=EMBED, input=["a", "b"])
    oc.list()
    with pytest.raises(ollama.ResponseError):
        oc.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert httpx.get(f"{facade}/wp-login.php", timeout=10).status_code == 404
    assert prompt > 0 and completion > 0

    _, after = scrape(facade)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    def requests(api: str, route: str, model: str, status: str) -> float:
        return delta(
            "vllama_requests_total",
            api=api,
            route=route,
            model=model,
            status=status,
            key="anonymous",
        )

    assert requests("ollama", "/api/chat", CHAT, "200") == 2
    assert requests("ollama", "/api/generate", CHAT, "200") == 1
    assert requests("openai", "/v1/chat/completions", CHAT, "200") == 1
    assert requests("openai", "/v1/embeddings", EMBED, "200") == 1
    assert requests("ollama", "/api/tags", "", "200") == 1
    assert requests("ollama", "/api/chat", "unknown", "404") == 1
    assert requests("other", "other", "", "404") == 1
    assert delta("vllama_prompt_tokens_total", model=CHAT) == prompt
    assert delta("vllama_completion_tokens_total", model=CHAT) == completion
    chat = {"api": "openai", "route": "/v1/chat/completions", "model": CHAT}
    assert delta("vllama_time_to_first_token_seconds_count", **chat) == 1
    gen = {"api": "ollama", "route": "/api/generate", "model": CHAT}
    assert delta("vllama_time_to_first_token_seconds_count", **gen) == 1
    # One gap per network read after the first, on both APIs (the events one read brings
    # are translated and written together): at most one per event, none when the engine's
    # events came in one read.
    content_parts = [p for p in parts if p.response]
    assert 0 <= delta("vllama_inter_chunk_seconds_count", **gen) <= len(content_parts) - 1
    assert delta("vllama_request_duration_seconds_count", **gen) == 1
    assert delta("vllama_overhead_seconds_count", api="ollama", route="/api/chat") == 2
    assert get(after, "vllama_engine_up", engine=chat_engine.url) == 1
    assert get(after, "vllama_build_info", version=__version__) == 1
    # The scrape running now is the only request in flight.
    assert get(after, "vllama_requests_in_flight", api="other", route="/metrics") == 1
    assert get(after, "vllama_requests_in_flight", api="ollama", route="/api/chat") == 0


def test_promtool_accepts_the_live_page(facade: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh (Debian `prometheus`)")
    httpx.post(
        f"{facade}/api/generate",
        json={"model": CHAT, "prompt": "x", "stream": False, "options": {"num_predict": 2}},
        timeout=60,
    ).raise_for_status()
    text, _ = scrape(facade)
    assert "vllama_requests_total{" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    ).decode()
