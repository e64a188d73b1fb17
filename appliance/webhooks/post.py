"""One signed POST of one event to one sink: the body, its headers, and what came back.

Receivers verify `X-Kiln-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body with the sink's
secret (compare in constant time). The body is the event itself and is the same on every attempt, so
a receiver can drop repeats by `X-Kiln-Event-Id`; `X-Kiln-Timestamp` (Unix seconds of this attempt)
lets it refuse stale replays.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Kiln-Signature"
USER_AGENT = "Kiln-Webhooks/1"
# a receiver's answer body is not used; reading a little lets the connection close cleanly
READ_LIMIT = 64 * 1024


def event_body(event: dict[str, Any]) -> bytes:
    """The JSON of an event, keys sorted and compact, so every attempt sends the same bytes."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests do) with the signature header."""
    return hmac.compare_digest(sign(secret, body), header)


def headers_for(
    secret: bytes, body: bytes, *, event_id: int, action: str, delivery_id: int, attempt: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Kiln-Event": action,
        "X-Kiln-Event-Id": str(event_id),
        "X-Kiln-Delivery": str(delivery_id),
        "X-Kiln-Attempt": str(attempt),
        "X-Kiln-Timestamp": str(int(time.time())),
        SIGNATURE_HEADER: sign(secret, body),
    }


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None
    seconds: float
    posted: bool = True  # False: nothing went to the receiver (sink gone, event pruned, a bug)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Connection:
    """POSTs to one sink over one kept-alive connection (reopened when the receiver closes it)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        self.timeout = timeout
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname or ""
        self.conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context()
            self.conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
        else:
            self.conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """POST and report; never raises. Redirects are not followed: a 3xx is a failed attempt, since
        following one would send the signed event somewhere the operator did not register."""
        start = time.monotonic()
        reused = self.conn.sock is not None
        try:
            try:
                return self._exchange(body, headers, start)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the receiver closed an idle kept-alive connection just as it was reused: once more
                self.conn.close()
                return self._exchange(body, headers, start)
        except TimeoutError:
            self.conn.close()
            return Answer(None, f"no answer within {self.timeout:g} s", time.monotonic() - start)
        except ssl.SSLError as exc:
            self.conn.close()
            return Answer(None, f"TLS: {exc.reason or exc}"[:255], time.monotonic() - start)
        except ConnectionRefusedError:
            self.conn.close()
            return Answer(None, "connection refused", time.monotonic() - start)
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            return Answer(None, f"{type(exc).__name__}: {exc}"[:255], time.monotonic() - start)

    def _exchange(self, body: bytes, headers: dict[str, str], start: float) -> Answer:
        self.conn.request("POST", self.path, body=body, headers=headers)
        response = self.conn.getresponse()
        response.read(READ_LIMIT)
        if response.will_close or response.length:  # unread rest or a close: start afresh next time
            self.conn.close()
        error = None if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}"[:255]
        return Answer(response.status, error, time.monotonic() - start)

    def close(self) -> None:
        self.conn.close()


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """One POST on a connection of its own."""
    conn = Connection(url, timeout=timeout)
    try:
        return conn.post(body, headers)
    finally:
        conn.close()
