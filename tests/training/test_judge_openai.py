"""The OpenAI-compatible HTTP backend of AI judges (training/runners/judge_openai.py), against real servers.

- Completions come from ``transformers serve``, transformers' own OpenAI-compatible server (FastAPI and uvicorn),
  serving a tiny Llama from tests/tiny.py saved under tmp, on the CPU, in a subprocess started once per session.
  It was chosen over llama.cpp's server (``llama-cpp-python[server]``) because transformers is already a dependency
  and what its server imports besides (fastapi, uvicorn, openai; pinned in requirements-dev.txt) installs as pure
  Python wheels, while llama-cpp-python compiles C++ on install and would need the model converted to GGUF.
  Without those packages the tests that need the model server are skipped, or fail when ``CI`` is set.
- What a model server cannot be made to do on demand (429 with Retry-After, 5xx, hanging past the timeout, a
  redirect, a reply without content, echoing the key back) comes from a small real HTTP server (``http.server`` in a
  thread) that answers scripted statuses: the client under test speaks real HTTP to it, nothing of it is mocked.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from training.runners.judge_openai import Completion, OpenAIBackend, _retry_after, check_base_url

KEY = "sk-arbiter-test-0123456789-secret"
SERVE_PACKAGES = ("fastapi", "uvicorn", "openai", "pydantic")  # what `transformers serve` imports besides torch
READY_TIMEOUT = 180.0
TEXTS = [
    "Which answer is better, A or B? The first answer is clear and correct; the second is vague.",
    "Rate the answer from 1 to 5. Answer: A. Strength: slightly, clearly, much better.",
] * 20


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- a real model server: `transformers serve`


@dataclass
class Served:
    url: str
    model: str


def _skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI is set, so this is an error).", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`transformers serve` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"`transformers serve` was not ready within {READY_TIMEOUT:g} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """``transformers serve`` pinned to a tiny causal LM on the CPU, on a free port; stopped at the end."""
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        _skip_or_fail(
            f"`transformers serve` needs {', '.join(missing)}: pip install -r requirements-dev.txt "
            "(the OpenAI-backend tests against a real model server are skipped)"
        )
    import torch

    from tests.tiny import tiny_causal_lm, tiny_tokenizer

    root = tmp_path_factory.mktemp("served")
    folder = root / "tiny-judge"
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(TEXTS)
    model = tiny_causal_lm(tokenizer)
    # A random model may end at once or emit only special tokens (decoded to ""): suppressing them makes every
    # answer max_tokens of visible text, so the tests can assert non-empty texts and exact token counts.
    model.generation_config.suppress_tokens = list(tokenizer.all_special_ids)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    port = _free_port()
    log = root / "serve.log"
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder)]
    command += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder: never reach for the Hub
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}/health", log)
        yield Served(url=f"http://127.0.0.1:{port}/v1", model=str(folder))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_completions_from_transformers_serve(served):
    with OpenAIBackend(served.url, served.model, None, max_tokens=6, allowed_hosts=["127.0.0.1"]) as backend:
        results = backend.complete([ask("Which answer is better, A or B?"), ask("Rate the answer from 1 to 5.")])
    assert len(results) == 2
    for result in results:
        assert result.error is None
        assert isinstance(result.text, str) and result.text.strip()
        assert result.completion_tokens == 6  # special tokens are suppressed: it never stops early
        assert result.prompt_tokens > 0
    # The chat template adds the same wrapping to both prompts; the longer question has more tokens.
    assert results[0].prompt_tokens != results[1].prompt_tokens


def test_order_preserved_under_concurrency_on_transformers_serve(served):
    # Prompts of strictly increasing length: their prompt-token counts tell which reply answered which prompt.
    conversations = [ask("Which answer is better? " * k) for k in range(1, 9)]
    with OpenAIBackend(served.url, served.model, None, concurrency=4, max_tokens=4) as backend:
        together = backend.complete(conversations)
    assert [r.error for r in together] == [None] * 8
    counts = [r.prompt_tokens for r in together]
    assert counts == sorted(counts) and len(set(counts)) == 8
    with OpenAIBackend(served.url, served.model, None, concurrency=1, max_tokens=4) as backend:
        alone = [backend.complete([c])[0] for c in conversations[::3]]
    # Temperature 0 is greedy: the same prompt gets the same answer, whatever ran beside it.
    assert [r.text for r in alone] == [r.text for r in together[::3]]
    assert [r.prompt_tokens for r in alone] == counts[::3]


def test_transformers_serve_refuses_another_model_without_retry(served):
    with OpenAIBackend(served.url, "some-other-model", KEY, retries=3) as backend:
        backend.backoff_base, backend.backoff_max = 20.0, 20.0  # a retry would wait 10 s or more: none happened
        started = time.monotonic()
        [result] = backend.complete([ask("Hello?")])
    assert time.monotonic() - started < 5.0
    assert result.text is None
    assert result.error.startswith("HTTP 400: Server is pinned to")
    assert "attempts" not in result.error and KEY not in result.error


# ---------------------------------------------------------------- a scripted real HTTP server


def chat_reply(text: str, prompt_tokens: int = 11, completion_tokens: int = 3) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class Scripted:
    """A real HTTP/1.1 server; ``respond(n, body) -> (status, headers, body, delay_s)`` scripts its n-th answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.respond = lambda n, body: (200, {}, chat_reply("A"), 0.0)
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with scripted.lock:
                    n = len(scripted.requests)
                    scripted.requests.append(
                        {
                            "at": time.monotonic(),
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "client_port": self.client_address[1],
                        }
                    )
                    scripted.active += 1
                    scripted.max_active = max(scripted.max_active, scripted.active)
                try:
                    status, headers, payload, delay = scripted.respond(n, body)
                    time.sleep(delay)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass
                finally:
                    with scripted.lock:
                        scripted.active -= 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def gaps(self) -> list[float]:
        times = [r["at"] for r in self.requests]
        return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def backend_for():
    """Builds backends (closed after the test) with a fast backoff unless a test sets its own."""
    made = []

    def make(url, api_key=KEY, **options):
        options.setdefault("allowed_hosts", ["127.0.0.1"])
        backend = OpenAIBackend(url, "judge-model", api_key, **options)
        backend.backoff_base, backend.backoff_max = 0.01, 0.05
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def assert_no_key(results: list[Completion], caplog) -> None:
    for result in results:
        assert KEY not in (result.error or "")
    for record in caplog.records:
        assert KEY not in record.getMessage()


def test_request_carries_model_messages_settings_and_key(scripted, backend_for):
    backend = backend_for(scripted.url, temperature=0.0, max_tokens=7)
    [result] = backend.complete([ask("Is A better than B?")])
    assert result == Completion(text="A", prompt_tokens=11, completion_tokens=3, error=None)
    [request] = scripted.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["body"] == {
        "model": "judge-model",
        "messages": [{"role": "user", "content": "Is A better than B?"}],
        "temperature": 0.0,
        "max_tokens": 7,
        "stream": False,
    }
    assert KEY not in repr(backend)

    backend_for(scripted.url + "/", api_key=None).complete([ask("Again?")])
    assert "authorization" not in scripted.requests[1]["headers"]
    assert scripted.requests[1]["path"] == "/v1/chat/completions"  # a trailing slash is not doubled


def test_order_kept_and_concurrency_bounded(scripted, backend_for):
    rng = random.Random(3)
    delays = {f"question {i}": rng.uniform(0.02, 0.15) for i in range(12)}
    scripted.respond = lambda n, body: (
        200,
        {},
        chat_reply("answer to " + body["messages"][0]["content"], prompt_tokens=n + 1),
        delays[body["messages"][0]["content"]],
    )
    backend = backend_for(scripted.url, concurrency=3)
    results = backend.complete([ask(f"question {i}") for i in range(12)])
    assert [r.text for r in results] == [f"answer to question {i}" for i in range(12)]
    assert len(scripted.requests) == 12
    # The bound holds and is used: exactly 3 requests were in flight at the busiest moment.
    assert scripted.max_active == 3
    # Connections are pooled: 12 requests over at most 3 connections (one per worker), not one each.
    assert len({r["client_port"] for r in scripted.requests}) <= 3
    assert backend.complete([]) == []


def test_429_honours_retry_after(scripted, backend_for, caplog):
    caplog.set_level(logging.WARNING, logger="training.runners.judge_openai")
    scripted.respond = lambda n, body: (
        (429, {"Retry-After": "1"}, {"error": {"message": "Rate limit reached"}}, 0.0)
        if n == 0
        else (200, {}, chat_reply("B"), 0.0)
    )
    backend = backend_for(scripted.url)
    backend.backoff_max = 5.0
    [result] = backend.complete([ask("A or B?")])
    assert result.text == "B" and result.error is None
    assert len(scripted.requests) == 2
    assert scripted.gaps()[0] >= 0.95  # waited the second the server asked for, not the 0.01 s backoff
    assert any("HTTP 429: Rate limit reached" in r.getMessage() for r in caplog.records)
    assert_no_key([result], caplog)


def test_retry_after_is_capped(scripted, backend_for):
    scripted.respond = lambda n, body: (
        (429, {"Retry-After": "3600"}, b"slow down", 0.0) if n < 2 else (200, {}, chat_reply("A"), 0.0)
    )
    backend = backend_for(scripted.url)
    backend.backoff_max = 0.2
    started = time.monotonic()
    [result] = backend.complete([ask("A or B?")])
    assert result.text == "A"
    assert len(scripted.requests) == 3
    assert all(0.18 <= gap < 2.0 for gap in scripted.gaps())
    assert time.monotonic() - started < 5.0  # not an hour


def test_5xx_retried_with_exponential_backoff_then_recorded(scripted, backend_for, caplog):
    scripted.respond = lambda n, body: (503, {}, {"error": {"message": f"overloaded, key {KEY}"}}, 0.0)
    backend = backend_for(scripted.url, retries=3)
    backend.backoff_base, backend.backoff_max = 0.1, 10.0
    [result] = backend.complete([ask("A or B?")])
    assert len(scripted.requests) == 4  # the first attempt and 3 retries
    assert result.text is None and result.prompt_tokens is None
    assert result.error == "HTTP 503: overloaded, key [redacted] (after 4 attempts)"
    gaps = scripted.gaps()
    # Attempt n waits between half and all of 0.1 * 2**n seconds (jitter), so the waits grow.
    for n, gap in enumerate(gaps):
        assert 0.1 * 2**n / 2 - 0.01 <= gap < 0.1 * 2**n + 1.0  # the slack is for a busy machine
    assert gaps[2] > gaps[0]
    assert_no_key([result], caplog)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_not_retried_and_key_never_shown(scripted, backend_for, caplog, status):
    # Like some hosted services, the server echoes the credentials it was sent in its error message.
    scripted.respond = lambda n, body: (
        status,
        {},
        {"error": {"message": f"Incorrect API key provided: {scripted.requests[n]['headers']['authorization']}"}},
        0.0,
    )
    backend = backend_for(scripted.url, retries=4)
    [result] = backend.complete([ask("A or B?")])
    assert len(scripted.requests) == 1
    assert result.error == f"HTTP {status}: Incorrect API key provided: Bearer [redacted]"
    assert_no_key([result], caplog)


def test_read_timeout_retried(scripted, backend_for, caplog):
    scripted.respond = lambda n, body: (200, {}, chat_reply("slow" if n == 0 else "fast"), 6.0 if n == 0 else 0.0)
    backend = backend_for(scripted.url, timeout=0.3, retries=1)
    started = time.monotonic()
    [result] = backend.complete([ask("A or B?")])
    assert result.text == "fast"
    assert len(scripted.requests) == 2
    assert time.monotonic() - started < 3.0  # gave up on the first answer at the timeout, did not wait 6 s


def test_timeouts_exhausted_become_an_error(scripted, backend_for, caplog):
    scripted.respond = lambda n, body: (200, {}, chat_reply("late"), 1.0)
    backend = backend_for(scripted.url, timeout=0.2, retries=2)
    [result] = backend.complete([ask("A or B?")])
    assert len(scripted.requests) == 3
    assert result.text is None
    assert result.error == "read timeout after 0.2 s (after 3 attempts)"
    assert_no_key([result], caplog)


def test_refused_connection_retried_then_recorded(backend_for, caplog):
    port = _free_port()  # nothing listens there
    backend = backend_for(f"http://127.0.0.1:{port}/v1", retries=2)
    [result] = backend.complete([ask("A or B?")])
    assert result.text is None
    assert result.error.startswith("ConnectError: ") and result.error.endswith("(after 3 attempts)")
    assert_no_key([result], caplog)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"choices": []}, "the reply has no choices"),
        ({"object": "chat.completion"}, "the reply has no choices"),
        ({"error": {"message": "model crashed"}}, "the reply has no choices"),
        ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "the reply's first choice has no message content"),
        ({"choices": [{"message": {"role": "assistant", "content": None}}]}, "has no message content"),
        ({"choices": [{"message": {"content": None, "refusal": "I can't judge"}}]}, "(refusal: I can't judge)"),
        ({"choices": [{"message": {"content": ["A"]}}]}, "has no message content"),
        (b"<html>gateway</html>", "the reply is not JSON: <html>gateway</html>"),
        ([1, 2], "the reply has no choices"),
    ],
)
def test_reply_without_content_is_an_error(scripted, backend_for, reply, error):
    scripted.respond = lambda n, body: (200, {}, reply, 0.0)
    [result] = backend_for(scripted.url).complete([ask("A or B?")])
    assert result.text is None and result.completion_tokens is None
    assert error in result.error
    assert len(scripted.requests) == 1  # a malformed answer is recorded, not retried


def test_missing_or_bad_usage_gives_no_counts(scripted, backend_for):
    replies = [
        {"choices": [{"message": {"content": "A"}}]},
        {"choices": [{"message": {"content": ""}}], "usage": {"prompt_tokens": "9", "completion_tokens": -1}},
    ]
    scripted.respond = lambda n, body: (200, {}, replies[n], 0.0)
    backend = backend_for(scripted.url, concurrency=1)
    assert backend.complete([ask("1"), ask("2")]) == [
        Completion(text="A", prompt_tokens=None, completion_tokens=None, error=None),
        # An empty answer is what the model said: the judge's parser records it as unparseable.
        Completion(text="", prompt_tokens=None, completion_tokens=None, error=None),
    ]


def test_oversized_reply_is_an_error(scripted, backend_for):
    scripted.respond = lambda n, body: (200, {}, chat_reply("x" * 5000), 0.0)
    backend = backend_for(scripted.url)
    backend.max_response_bytes = 1000
    [result] = backend.complete([ask("A or B?")])
    assert result.error == "the reply is larger than 1000 bytes"


def test_redirect_not_followed(scripted, backend_for):
    scripted.respond = lambda n, body: (307, {"Location": "http://169.254.169.254/v1/chat/completions"}, b"", 0.0)
    [result] = backend_for(scripted.url).complete([ask("A or B?")])
    assert result.error == "HTTP 307: the server answered with a redirect, which is not followed"
    assert len(scripted.requests) == 1


@pytest.mark.parametrize(
    ("url", "allowed", "message"),
    [
        ("http://{host}/v1", ["api.example.org"], "not among the allowed hosts (api.example.org)"),
        ("http://{host}/v1", [], "not among the allowed hosts (none)"),
        ("http://{host}/v1", ["127.0.0.1:1"], "not among the allowed hosts"),
        ("http://{host}/v1", ["127.0.0.2"], "not among the allowed hosts"),
        ("ftp://{host}/v1", None, "must start with http:// or https://, not ftp"),
        ("file:///etc/passwd", None, "must start with http:// or https://, not file"),
        ("127.0.0.1/v1", None, "must start with http:// or https://"),
        ("http:///v1", None, "has no host"),
        ("http://user:secret@{host}/v1", ["127.0.0.1"], "must not hold credentials"),
        ("http://{host}/v1?api-key=secret", ["127.0.0.1"], "must not have a query"),
        ("http://{host}:99999999/v1", None, "not a valid URL"),
    ],
)
def test_refused_base_urls_raise_before_any_request(scripted, url, allowed, message):
    host = f"127.0.0.1:{scripted.port}"
    with pytest.raises(ValueError) as raised:
        OpenAIBackend(url.format(host=host), "judge-model", KEY, allowed_hosts=allowed)
    assert message in str(raised.value)
    assert "secret" not in str(raised.value) and KEY not in str(raised.value)
    assert scripted.requests == []


def test_allowed_hosts_forms(scripted):
    port = scripted.port
    assert check_base_url(f"http://127.0.0.1:{port}/v1/", [f"127.0.0.1:{port}"]) == f"http://127.0.0.1:{port}/v1"
    assert check_base_url(f"http://LocalHost:{port}/v1", ["localhost"]) == f"http://LocalHost:{port}/v1"
    assert check_base_url("https://api.example.org/v1", ["API.example.org"]) == "https://api.example.org/v1"
    assert check_base_url("https://api.example.org/v1", ["api.example.org:443"]) == "https://api.example.org/v1"
    assert check_base_url("http://[::1]:8000/v1", ["::1"]) == "http://[::1]:8000/v1"
    assert check_base_url("http://anywhere.example:8000/v1", None) == "http://anywhere.example:8000/v1"
    with pytest.raises(ValueError, match="not among the allowed hosts"):
        check_base_url("http://api.example.org.evil.test/v1", ["api.example.org"])
    with pytest.raises(ValueError, match="not among the allowed hosts"):
        check_base_url("http://api.example.org:8080/v1", ["api.example.org:443"])


def test_retry_after_values():
    assert _retry_after("3") == 3.0
    assert _retry_after("0.5") == 0.5
    assert _retry_after("-4") == 0.0
    assert _retry_after(None) is None and _retry_after("") is None and _retry_after("soon") is None
    assert _retry_after("nan") is None
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 17 <= _retry_after(future) <= 20
    assert _retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_bad_settings_refused():
    for options, message in [
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"retries": -1}, "retries must be 0 or more"),
        ({"timeout": 0}, "timeout must be a positive number"),
    ]:
        with pytest.raises(ValueError, match=message):
            OpenAIBackend("http://127.0.0.1:9/v1", "m", None, **options)
    with pytest.raises(ValueError, match="A model name is required"):
        OpenAIBackend("http://127.0.0.1:9/v1", "", None)


def test_module_imports_no_django():
    # It runs in the worker's runner subprocess, which stays free of Django.
    code = "import sys, training.runners.judge_openai; print(sorted(m for m in sys.modules if m.startswith('django')))"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
