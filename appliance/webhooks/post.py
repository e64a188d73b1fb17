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

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST and report; never raises. Redirects are not followed: a 3xx is a failed attempt, since
    following one would send the signed event somewhere the operator did not register."""
    start = time.monotonic()
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    host = parts.hostname or ""
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(READ_LIMIT)
        error = None if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}"[:255]
        return Answer(response.status, error, time.monotonic() - start)
    except TimeoutError:
        return Answer(None, f"no answer within {timeout:g} s", time.monotonic() - start)
    except ssl.SSLError as exc:
        return Answer(None, f"TLS: {exc.reason or exc}"[:255], time.monotonic() - start)
    except ConnectionRefusedError:
        return Answer(None, "connection refused", time.monotonic() - start)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:255], time.monotonic() - start)
    finally:
        conn.close()
