"""The planner: one chat completion from an OpenAI-compatible endpoint.

Where it sits in a run: docs/architecture.md#runs-and-write-back.

Configuration (environment, read by `planner_config_from_env`):

    MANA_LLM_URL       base URL of the endpoint, e.g. https://llm.internal or
                       http://localhost:11434. The request goes to {base}/v1/chat/completions;
                       a base that already ends in /v1 is accepted (not doubled).
                       Unset or empty: no planner (the scheduler only records its decisions).
    MANA_LLM_API_KEY   bearer key for the endpoint; falls back to MANA_SERVICE_KEY (the
                       service key mana's services share). Required when MANA_LLM_URL is set.
    MANA_LLM_MODEL     model name (default gpt-4o-mini).
    MANA_LLM_TIMEOUT   seconds one request may take, as a whole (default 60).

The key goes into the Authorization header only: it is never logged, never part of an error
message (an echoed key in a response body is masked) and not shown by the config's repr.

Errors. Anything but a 2xx answer carrying a chat completion raises `PlannerError`, with one
line naming the status (or the transport failure) and a short excerpt of the body. A
completion whose *content* is not the plan we asked for is not an error here: the runner
counts it as a parse failure.

Etiquette. One request per attempt, bounded by the timeout. `PlannerError.retryable` is
True only for a timeout, a transport failure, 429, 5xx and a 2xx that is not a chat
completion (a proxy's error page); `retry_after` carries the
server's Retry-After (seconds or an HTTP date). The run worker retries in the ledger, one
attempt at a time, never sooner than Retry-After; other 4xx answers are not retried.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec

from . import metrics
from .errors import ConfigError

URL_ENV = "MANA_LLM_URL"
KEY_ENV = "MANA_LLM_API_KEY"
SERVICE_KEY_ENV = "MANA_SERVICE_KEY"
MODEL_ENV = "MANA_LLM_MODEL"
TIMEOUT_ENV = "MANA_LLM_TIMEOUT"

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT = 60.0
COMPLETIONS_PATH = "/v1/chat/completions"
EXCERPT_CHARS = 200
USER_AGENT = "mana-ai-consumer"


class PlannerConfig(msgspec.Struct, frozen=True, kw_only=True):
    base_url: str
    api_key: str
    model: str = DEFAULT_MODEL
    timeout: float = DEFAULT_TIMEOUT  # seconds for the whole request, body included

    def __repr__(self) -> str:
        # The key must not reach a log line through a repr.
        return (
            f"PlannerConfig(base_url={self.base_url!r}, api_key='***', model={self.model!r}, "
            f"timeout={self.timeout!r})"
        )

    __str__ = __repr__

    @property
    def endpoint(self) -> str:
        base = self.base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]  # MANA_LLM_URL=https://api.openai.com/v1 works too
        return base + COMPLETIONS_PATH


class PlannerReply(msgspec.Struct, frozen=True):
    content: str  # the assistant message's text; "" when the model sent none
    total_tokens: int  # usage.total_tokens (prompt + completion when only those are given)
    model: str | None = None  # the model that answered, as the endpoint reports it


class PlannerError(Exception):
    """The planner endpoint failed: transport error, timeout, non-2xx or not a completion."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        # No status: a timeout or transport failure, worth another attempt.
        self.retryable = (
            retryable
            if retryable is not None
            else status is None or status == 429 or status >= 500
        )
        self.retry_after = retry_after


MAX_RETRY_AFTER = 3600.0  # seconds; a longer Retry-After is read as this


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delta seconds or an HTTP date) as seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class PlannerClient(Protocol):
    """What the runner needs from a planner (tests may pass a fake)."""

    async def plan(self, messages: list[dict[str, str]]) -> PlannerReply: ...


# --- the completion, as much of it as we read -------------------------------------------


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Usage(msgspec.Struct):
    total_tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None
    model: str | None = None


_completion = msgspec.json.Decoder(_Completion)


def _tokens(usage: _Usage | None) -> int:
    if usage is None:
        return 0
    if usage.total_tokens is not None:
        return max(0, usage.total_tokens)
    # Some OpenAI-compatible servers report only the parts.
    return max(0, (usage.prompt_tokens or 0) + (usage.completion_tokens or 0))


class Planner:
    """One async HTTP client per planner; close it with `aclose()` or `async with`."""

    def __init__(
        self, config: PlannerConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if not config.api_key:
            raise ConfigError("the planner needs an API key")
        self.config = config
        self._client = httpx.AsyncClient(
            # httpx's timeout bounds each socket operation; fail_after in plan() bounds
            # the whole request, so a slowly dripping body cannot outlast it.
            timeout=httpx.Timeout(config.timeout),
            headers={
                "Authorization": f"Bearer {config.api_key}",
                "User-Agent": USER_AGENT,
            },
            transport=transport,
        )

    async def __aenter__(self) -> Planner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def plan(self, messages: list[dict[str, str]]) -> PlannerReply:
        """POST the messages, return the reply's content and token usage; PlannerError else."""
        cfg = self.config
        body = {
            "model": cfg.model,
            "messages": messages,
            "response_format": {"type": "json_object"},
        }
        started = time.perf_counter()
        try:
            with anyio.fail_after(cfg.timeout):
                response = await self._client.post(cfg.endpoint, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise PlannerError(
                f"planner request to {cfg.endpoint} timed out after {cfg.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise PlannerError(
                f"planner request to {cfg.endpoint} failed: {type(exc).__name__}: "
                f"{self._excerpt(str(exc))}"
            ) from None
        finally:
            metrics.PLANNER_REQUEST_DURATION.observe(time.perf_counter() - started)

        if not response.is_success:
            raise PlannerError(
                f"planner answered HTTP {response.status_code} from {cfg.endpoint}: "
                f"{self._excerpt(response.text)}",
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        try:
            completion = _completion.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PlannerError(
                f"planner answered HTTP {response.status_code} without a chat completion "
                f"({exc}): {self._excerpt(response.text)}",
                status=response.status_code,
                retryable=True,
            ) from None
        if not completion.choices:
            raise PlannerError(
                "planner answered a chat completion without choices",
                status=response.status_code,
                retryable=True,
            )
        return PlannerReply(
            content=completion.choices[0].message.content or "",
            total_tokens=_tokens(completion.usage),
            model=completion.model,
        )

    def _excerpt(self, text: str) -> str:
        """One line, at most EXCERPT_CHARS, with the key masked should a server echo it."""
        line = " ".join(text.split())
        if self.config.api_key:
            line = line.replace(self.config.api_key, "***")
        if len(line) > EXCERPT_CHARS:
            line = line[:EXCERPT_CHARS] + "..."
        return line or "(empty body)"


def planner_config_from_env(env: Mapping[str, str] | None = None) -> PlannerConfig | None:
    """The planner's config from the environment; None when MANA_LLM_URL is unset.

    Raises ConfigError for a URL that is not http(s), a missing key or a bad timeout, so a
    misconfiguration fails at start-up rather than at the first due mission.
    """
    source: Mapping[str, str] = os.environ if env is None else env
    base = (source.get(URL_ENV) or "").strip()
    if not base:
        return None
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{URL_ENV} must be an http(s) URL, got {base!r}")
    key = (source.get(KEY_ENV) or source.get(SERVICE_KEY_ENV) or "").strip()
    if not key:
        raise ConfigError(f"{URL_ENV} is set but neither {KEY_ENV} nor {SERVICE_KEY_ENV} is")
    model = (source.get(MODEL_ENV) or "").strip() or DEFAULT_MODEL
    raw = (source.get(TIMEOUT_ENV) or "").strip()
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number, got {raw!r}") from None
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds")
    return PlannerConfig(base_url=base, api_key=key, model=model, timeout=timeout)
