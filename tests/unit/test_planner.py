"""The planner client against a stub planner over real sockets, and the runner's pure
rules (Retry-After, backoff, the interval cadence's next run): no database."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.ledger import Job
from consumer.planner import (
    Planner,
    PlannerConfig,
    PlannerError,
    planner_config_from_env,
    retry_after_seconds,
)
from consumer.runner import MIN_INTERVAL_MINUTES, RunFailed, next_run_after
from consumer.worker import RunWorker
from tests.helpers import PLANNER_KEY as KEY
from tests.helpers import metric, planner_fixtures
from tests.planner_stub import PlannerStub

T0 = datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
PLAN = {
    "summary": "Zwei Schritte fuer die Woche",
    "steps": [{"summary": "Notiz anlegen", "toolName": "notes.create",
               "params": {"title": "Wochenplan"}, "rationale": "Ueberblick"}],
}


stub, planner = planner_fixtures(PLAN)


# --------------------------------------------------------------------------- planner


@pytest.mark.anyio
async def test_planner_posts_an_openai_chat_completion(
    stub: PlannerStub, planner: Planner
) -> None:
    before = metric("mana_ai_planner_request_duration_seconds_count")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    reply = await planner.plan(messages)
    assert (reply.content, reply.total_tokens, reply.model) == (
        json.dumps(PLAN), 123, "stub-model")
    (req,) = stub.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.body == {"model": "gpt-4o-mini", "messages": messages,
                        "response_format": {"type": "json_object"}}
    assert metric("mana_ai_planner_request_duration_seconds_count") == before + 1


@pytest.mark.anyio
async def test_planner_base_url_may_end_in_v1(stub: PlannerStub) -> None:
    config = PlannerConfig(base_url=stub.url + "/v1/", api_key=KEY, model="m")
    assert config.endpoint == stub.url + "/v1/chat/completions"
    async with Planner(config) as p:
        await p.plan([{"role": "user", "content": "x"}])
    assert stub.requests[0].path == "/v1/chat/completions"
    assert stub.requests[0].body["model"] == "m"


@pytest.mark.anyio
@pytest.mark.parametrize(("usage", "tokens"), [
    (None, 0),
    ({}, 0),
    ({"prompt_tokens": 7, "completion_tokens": 5}, 12),
    ({"total_tokens": 99, "prompt_tokens": 1}, 99),
])
async def test_planner_token_usage(
    stub: PlannerStub, planner: Planner, usage: dict[str, int] | None, tokens: int
) -> None:
    stub.usage = usage
    reply = await planner.plan([{"role": "user", "content": "x"}])
    assert reply.total_tokens == tokens


@pytest.mark.anyio
async def test_planner_http_error_is_one_line_without_the_key(
    stub: PlannerStub, planner: Planner
) -> None:
    before = metric("mana_ai_planner_request_duration_seconds_count")
    stub.status = 500
    stub.raw = f'{{"error": "upstream overloaded",\n "echo": "Bearer {KEY}"}}' + "x" * 500
    with pytest.raises(PlannerError) as info:
        await planner.plan([{"role": "user", "content": "x"}])
    message = str(info.value)
    assert info.value.status == 500
    assert message.startswith(f"planner answered HTTP 500 from {stub.url}/v1/chat/completions: ")
    assert "upstream overloaded" in message and "\n" not in message
    assert KEY not in message and "Bearer ***" in message
    assert len(message) < 400
    assert metric("mana_ai_planner_request_duration_seconds_count") == before + 1


@pytest.mark.anyio
async def test_planner_timeout_bounds_the_whole_request(stub: PlannerStub) -> None:
    stub.delay = 3.0
    started = time.monotonic()
    async with Planner(PlannerConfig(base_url=stub.url, api_key=KEY, timeout=0.3)) as p:
        with pytest.raises(PlannerError, match=r"timed out after 0\.3 s"):
            await p.plan([{"role": "user", "content": "x"}])
    assert time.monotonic() - started < 2.0


@pytest.mark.anyio
@pytest.mark.parametrize("raw", ["not json", '{"choices": []}', '{"object": "error"}'])
async def test_planner_answer_that_is_not_a_completion(
    stub: PlannerStub, planner: Planner, raw: str
) -> None:
    stub.raw = raw
    with pytest.raises(PlannerError, match="HTTP 200|without choices"):
        await planner.plan([{"role": "user", "content": "x"}])


@pytest.mark.anyio
async def test_planner_unreachable() -> None:
    with PlannerStub() as closed:
        url = closed.url
    async with Planner(PlannerConfig(base_url=url, api_key=KEY, timeout=2)) as p:
        with pytest.raises(PlannerError, match="failed: ConnectError"):
            await p.plan([{"role": "user", "content": "x"}])


def test_planner_config_from_env() -> None:
    assert planner_config_from_env({}) is None
    assert planner_config_from_env({"MANA_LLM_API_KEY": KEY}) is None
    config = planner_config_from_env({"MANA_LLM_URL": "https://llm.example",
                                      "MANA_SERVICE_KEY": "svc"})
    assert config == PlannerConfig(base_url="https://llm.example", api_key="svc")
    config = planner_config_from_env({
        "MANA_LLM_URL": "http://h:1", "MANA_LLM_API_KEY": KEY, "MANA_SERVICE_KEY": "svc",
        "MANA_LLM_MODEL": "llama3", "MANA_LLM_TIMEOUT": "12.5"})
    assert config == PlannerConfig(base_url="http://h:1", api_key=KEY, model="llama3",
                                   timeout=12.5)
    assert KEY not in repr(config) and KEY not in str(config)
    for env, match in (
        ({"MANA_LLM_URL": "http://h"}, "neither MANA_LLM_API_KEY nor MANA_SERVICE_KEY"),
        ({"MANA_LLM_URL": "llm.example", "MANA_LLM_API_KEY": "k"}, "http"),
        ({"MANA_LLM_URL": "http://h", "MANA_LLM_API_KEY": "k", "MANA_LLM_TIMEOUT": "x"},
         "number"),
        ({"MANA_LLM_URL": "http://h", "MANA_LLM_API_KEY": "k", "MANA_LLM_TIMEOUT": "0"},
         "positive"),
    ):
        with pytest.raises(ConfigError, match=match):
            planner_config_from_env(env)



# --------------------------------------------------------------------------- runner rules


def test_retry_after_is_read_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("99999999") == 3600.0  # capped
    assert retry_after_seconds("Thu, 26 Nov 2026 10:00:30 GMT",
                               now=datetime(2026, 11, 26, 10, tzinfo=UTC).timestamp()) == 30.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(bad) is None, bad
    assert PlannerError("x", status=503).retryable and PlannerError("x").retryable
    assert PlannerError("x", status=429).retryable
    assert not PlannerError("x", status=400).retryable
    assert not PlannerError("x", status=401).retryable


def test_backoff_doubles_and_honours_retry_after() -> None:
    worker = RunWorker(None, None, backoff=2.0, max_backoff=10.0)  # type: ignore[arg-type]

    def delay(attempt: int, retry_after: float | None = None) -> float:
        job = Job(user_id="u", mission_id="m", due_at=T0, next_run_at="x", agent_id=None,
                  attempt=attempt, owner="o", trace_id=None, parent_span=None,
                  lease_expired=False, mission=None, agent=None)
        return worker._delay(job, RunFailed("x", outcome="e", retry_after=retry_after))

    assert [delay(n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert delay(1, retry_after=60.0) == 60.0  # never sooner than the server asked


def test_next_run_after() -> None:
    def interval(n: Any) -> dict[str, Any]:
        return {"kind": "interval", "everyMinutes": n}

    assert next_run_after(interval(60), T0) == T0 + timedelta(hours=1)
    assert next_run_after(interval(1.5), T0) == T0 + timedelta(seconds=90)
    # A tiny interval is floored: no planner busy loop.
    assert next_run_after(interval(0.01), T0) == T0 + timedelta(minutes=MIN_INTERVAL_MINUTES)
    assert next_run_after({"kind": "interval", "everyMinutes": None, "intervalMinutes": 5},
                          T0) == T0 + timedelta(minutes=5)
    for bad in (interval(0), interval(-5), interval(True), interval("60"),
                interval(float("nan")), interval(float("inf")), interval(1e300),
                {"kind": "interval"}, {"kind": "cron", "everyMinutes": 5}, None, "interval"):
        assert next_run_after(bad, T0) is None, bad
