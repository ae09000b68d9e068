"""An Introspector that asks any OpenAI-compatible chat-completions endpoint for the pattern.

Network I/O lives here, outside fai_core. The request is built from a `GroupView` only
(tool names, outcome classes, rewards, advantages), so no raw tool input or output can
reach the endpoint, whoever runs it. The answer is untrusted text: it is cleaned and cut
to a valid pattern (<= 32 words) or refused with `MalformedAnswer`.

Standard library only (urllib). Environment proxy variables are ignored unless
`use_env_proxy=True`, so a local endpoint is never silently routed elsewhere.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

from fai_core import jsonlimits
from fai_core.introspection import GroupView, IntrospectionError, fit_pattern

#: Largest response body read; a chat completion with one short answer is far smaller.
MAX_RESPONSE_BYTES = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

SYSTEM_PROMPT = (
    "You distil reusable strategies for software agents. You get attempts at one task, "
    "as tool names with outcome classes and rewards; 'best' and 'worst' mark the highest "
    "and lowest return. Answer with ONE sentence of at most 32 words: a general, reusable "
    "rule naming tools and conditions that explains why the best attempt did better. "
    "No preamble, no quotes, no lists, no task-specific data."
)


class IntrospectionHTTPError(IntrospectionError):
    """The endpoint answered with an HTTP error (after any retries)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class IntrospectionUnavailable(IntrospectionError):
    """The endpoint could not be reached or timed out (after any retries)."""


class MalformedAnswer(IntrospectionError):
    """The endpoint answered, but not with a usable chat completion or pattern."""


_PREFIX_RE = re.compile(r"^\s*(?:pattern|strategy|rule|answer)\s*:\s*", re.IGNORECASE)
_FENCE_RE = re.compile(r"```[a-zA-Z]*")
_LIST_MARK_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_QUOTES = "\"'`“”‘’"


def clean_answer(content: str) -> str | None:
    """The model's answer as a pattern text, or None when nothing usable is left.

    Takes the first non-empty line (models add explanations after the sentence), drops
    code fences, list markers, a "Pattern:" label and surrounding quotes, then normalizes
    and cuts to 32 words / 1024 bytes.
    """
    text = _FENCE_RE.sub(" ", content)
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _PREFIX_RE.sub("", _LIST_MARK_RE.sub("", line)).strip().strip(_QUOTES).strip()
    if not re.search(r"[^\W\d_]", line):  # no letter at all
        return None
    return fit_pattern(line)


class HTTPIntrospector:
    """POST {url}/v1/chat/completions with {model, messages}; reads choices[0].message.content.

    Retries connection failures, timeouts and 408/429/5xx up to `max_retries` times with
    exponential backoff (`backoff` seconds, doubled each time, capped at 10 s). Any other
    HTTP error, and any malformed answer, fails at once.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 96,
        use_env_proxy: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if not 0 <= max_retries <= 10 or timeout <= 0 or backoff < 0:
            raise ValueError("max_retries must be in [0, 10], timeout > 0, backoff >= 0")
        self.endpoint = url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.temperature = temperature
        self.max_tokens = max_tokens
        handlers = [] if use_env_proxy else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)

    def request_body(self, group: GroupView) -> bytes:
        """The exact bytes POSTed for `group` (tests inspect them for leaks)."""
        facts = json.dumps(group.to_json(), separators=(",", ":"), sort_keys=True)
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": facts},
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        return json.dumps(body).encode("utf-8")

    def introspect(self, group: GroupView) -> str | None:
        answer = self._post(self.request_body(group))
        content = _content_of(answer)
        pattern = clean_answer(content)
        if pattern is None:
            raise MalformedAnswer("the answer holds no usable pattern text")
        return pattern

    def _post(self, body: bytes) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: IntrospectionError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(10.0, self.backoff * 2 ** (attempt - 1)))
            request = urllib.request.Request(self.endpoint, body, headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read(MAX_RESPONSE_BYTES + 1)
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                exc.close()
                last = IntrospectionHTTPError(exc.code, detail)
                if exc.code in RETRY_STATUSES:
                    continue
                raise last from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                last = IntrospectionUnavailable(f"{self.endpoint}: {reason}")
                continue
            if len(raw) > MAX_RESPONSE_BYTES:
                raise MalformedAnswer(f"response larger than {MAX_RESPONSE_BYTES} bytes")
            try:
                return jsonlimits.loads(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                raise MalformedAnswer(f"response is not JSON: {exc}") from None
        assert last is not None
        raise last


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        payload = jsonlimits.loads(exc.read(4096))
        message = payload["error"]["message"]
        if isinstance(message, str):
            return message[:200]
    except Exception:  # the detail is best effort: the status code is what matters
        pass
    return str(exc.reason)[:200]


def _content_of(answer: Any) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise MalformedAnswer("no choices[0].message.content in the response") from None
    if not isinstance(content, str):
        raise MalformedAnswer("choices[0].message.content is not a string")
    return content
