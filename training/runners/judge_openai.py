"""The OpenAI-compatible HTTP backend of AI judges: chat completions from vLLM, llama.cpp's server,
``transformers serve`` or a hosted service.

It runs in the worker's runner subprocess and imports no Django. The judge runner builds the conversations (one per
order shown) and parses the answers; this module only moves them over HTTP, safely:

- the base URL is checked before any request: http or https only, no credentials or query in it, and, when
  ``allowed_hosts`` is given, a host on that list (the outbound-hosts setting: no SSRF to the worker's network);
  redirects are never followed, so a listed host cannot bounce a request elsewhere;
- a bounded number of requests in flight (a thread pool over one pooled ``httpx.Client``);
- retries with exponential backoff and jitter on 429, 5xx and timeouts or dropped connections, honouring
  ``Retry-After``; any other 4xx is recorded at once (retrying a bad request or a bad key only repeats it);
- a reply without ``choices[0].message.content`` is an error, never a guess; token counts come from ``usage``;
- the API key is sent only in the ``Authorization`` header and is scrubbed from every error text and log line (some
  services echo a wrong key back in their error body).

Example::

    backend = OpenAIBackend("http://127.0.0.1:8000/v1", "my-model", os.environ.get("JUDGE_KEY"),
                            allowed_hosts=["127.0.0.1"])
    [done] = backend.complete([[{"role": "user", "content": "Which answer is better, A or B?"}]])
    done.text, done.prompt_tokens, done.completion_tokens, done.error
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
# A dropped or refused connection is as transient as a timeout; a malformed URL or a TLS failure is not.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
REDACTED = "[redacted]"


@dataclass
class Completion:
    """One conversation's answer: ``text`` and token counts, or ``error`` (then ``text`` is None)."""

    text: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible endpoint, several conversations at a time.

    ``base_url`` is the API root, e.g. ``http://host:8000/v1`` (``/chat/completions`` is appended). ``retries`` is
    the number of attempts after the first. ``allowed_hosts`` lists the host names (``"host"`` or ``"host:port"``)
    this backend may reach; ``None`` checks only the scheme (the caller passes the outbound-hosts setting), and an
    empty list refuses every host. A refused URL raises ``ValueError`` before any request.
    """

    # Backoff: attempt n waits between half and all of min(backoff_max, backoff_base * 2**n) seconds, or what
    # Retry-After asks if that is longer, never more than backoff_max (a test lowers it to stay fast).
    backoff_base = 0.5
    backoff_max = 30.0
    # A reply larger than this is an error, not a memory blow-up (a judge's answer is a few hundred tokens).
    max_response_bytes = 8 * 1024 * 1024

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        *,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 4,
        temperature: float = 0.0,
        max_tokens: int = 256,
        allowed_hosts: list[str] | None = None,
    ):
        if not model:
            raise ValueError("A model name is required.")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}.")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}.")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}.")
        self.url = check_base_url(base_url, allowed_hosts) + "/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.retries = retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._api_key = api_key or None
        headers = {"Accept": "application/json", "User-Agent": "arbiter-judge"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # follow_redirects=False: a redirect is reported, never followed (it could lead off the allowed hosts).
        # trust_env=False: no proxy or .netrc credentials picked up from the worker's environment; the request goes
        # where the checked URL says.
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:  # the key stays out of reprs (and so out of tracebacks' locals)
        return f"OpenAIBackend({self.url!r}, model={self.model!r}, concurrency={self.concurrency})"

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; the backend cannot be used afterwards."""
        self._client.close()

    def complete(self, conversations: list[list[dict]]) -> list[Completion]:
        """One ``Completion`` per conversation, in input order; at most ``concurrency`` requests in flight.

        A failure is that conversation's ``error``, never an exception: the judge records it and goes on.
        """
        if not conversations:
            return []
        workers = min(self.concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge-http") as pool:
            return list(pool.map(self._complete_one, conversations))

    def _complete_one(self, messages: list[dict]) -> Completion:
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": False,
        }
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                status, headers, body = self._post(payload)
            except RETRY_ERRORS as exc:
                problem = self._describe_exception(exc)
                if last:
                    return _failed(f"{problem} (after {attempts} attempts)")
                self._wait(attempt, None, problem)
                continue
            except httpx.HTTPError as exc:
                return _failed(self._describe_exception(exc))
            except _TooLarge:
                return _failed(f"the reply is larger than {self.max_response_bytes} bytes")
            if 200 <= status < 300:
                return self._parse(body)
            if 300 <= status < 400:
                return _failed(f"HTTP {status}: the server answered with a redirect, which is not followed")
            problem = f"HTTP {status}: {self._scrub(_error_detail(body))}"
            if status not in RETRY_STATUSES:
                return _failed(problem)
            if last:
                return _failed(f"{problem} (after {attempts} attempts)")
            self._wait(attempt, _retry_after(headers.get("retry-after")), problem)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns on its last attempt

    def _post(self, payload: dict) -> tuple[int, httpx.Headers, bytes]:
        # Streamed so that the size cap holds before the whole body is in memory.
        with self._client.stream("POST", self.url, json=payload) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _parse(self, body: bytes) -> Completion:
        try:
            data = json.loads(body)
        except ValueError:
            return _failed(f"the reply is not JSON: {self._scrub(_snippet(body))}")
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return _failed(f"the reply has no choices: {self._scrub(_snippet(body))}")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            refusal = message.get("refusal") if isinstance(message, dict) else None
            why = f" (refusal: {self._scrub(str(refusal)[:300])})" if refusal else ""
            return _failed(f"the reply's first choice has no message content{why}")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Completion(
            text=content,
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            error=None,
        )

    def _wait(self, attempt: int, retry_after: float | None, problem: str) -> None:
        step = min(self.backoff_max, self.backoff_base * 2**attempt)
        delay = step / 2 + random.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        delay = min(delay, self.backoff_max)
        logger.warning("Judge request to %s failed (%s); retrying in %.2f s.", self.url, problem, delay)
        time.sleep(delay)

    def _describe_exception(self, exc: httpx.HTTPError) -> str:
        if isinstance(exc, httpx.TimeoutException):
            kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
            return f"{kind} timeout after {self.timeout:g} s"
        return self._scrub(f"{type(exc).__name__}: {exc}")

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED) if self._api_key else text


def check_base_url(base_url: str, allowed_hosts: list[str] | None) -> str:
    """The base URL without a trailing slash, or ``ValueError`` when it may not be reached.

    >>> check_base_url("http://127.0.0.1:8000/v1/", ["127.0.0.1"])
    'http://127.0.0.1:8000/v1'
    """
    try:
        parts = urlsplit(str(base_url).strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"The judge's base URL is not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"The judge's base URL must start with http:// or https://, not {parts.scheme or '(none)'}.")
    if not parts.hostname:
        raise ValueError("The judge's base URL has no host.")
    # Credentials in the URL would travel in logs and error texts; the key comes from an environment variable.
    if parts.username is not None or parts.password is not None:
        raise ValueError("The judge's base URL must not hold credentials: name the API key's environment variable.")
    if parts.query or parts.fragment:
        raise ValueError("The judge's base URL must not have a query or a fragment.")
    host = parts.hostname.rstrip(".")  # urlsplit lowercases it and strips an IPv6 address's brackets
    if allowed_hosts is not None:
        port = port or (443 if parts.scheme == "https" else 80)
        allowed = {entry.strip().lower().rstrip(".") for entry in allowed_hosts}
        if host not in allowed and f"{host}:{port}" not in allowed and f"[{host}]:{port}" not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"The judge's host {host!r} is not among the allowed hosts ({listed}).")
    return str(base_url).strip().rstrip("/")


class _TooLarge(Exception):
    pass


def _failed(error: str) -> Completion:
    return Completion(text=None, prompt_tokens=None, completion_tokens=None, error=error)


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _error_detail(body: bytes) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}``), else the body's start."""
    try:
        data = json.loads(body)
    except ValueError:
        return _snippet(body) or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _snippet(error["message"].encode())
    if isinstance(error, str):
        return _snippet(error.encode())
    if isinstance(data, dict) and isinstance(data.get("detail"), str):  # FastAPI's HTTPException body
        return _snippet(data["detail"].encode())
    return _snippet(body)


def _retry_after(value: str | None) -> float | None:
    """Seconds asked by a ``Retry-After`` header: a number of seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
