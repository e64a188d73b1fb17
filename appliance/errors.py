"""One exception tree for Kiln's core. The API maps it to HTTP in one place (web/api/errors.py)."""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error Kiln raises on purpose."""

    status = 500
    retryable = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class NotFound(KilnError):
    status = 404


class Conflict(KilnError):
    """The request clashes with current state: stale version, duplicate name, exhausted range."""

    status = 409


class InvalidInput(KilnError):
    status = 400

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field=field)
        self.reason = reason


class Unauthorized(KilnError):
    status = 401


class Forbidden(KilnError):
    status = 403


class RangeExhausted(Conflict):
    """No free address is left in a range."""


class IllegalTransition(KilnError):
    """A node-role state change that the state table does not allow."""

    status = 409


class ConfigError(KilnError):
    """Bad configuration: the message names the key."""

    status = 500


class JigError(KilnError):
    """A jig run failed. `retryable` says whether the annealer may try again."""

    def __init__(self, message: str, *, retryable: bool = False, log: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.log = log


class BMCError(KilnError):
    """A BMC operation failed. `retryable` (a class property) says whether trying again may help."""

    status = 502


class BMCAuthError(BMCError):
    """The BMC refused the credentials: fix the username/password stored for the node."""


class BMCUnreachable(BMCError):
    """No answer from the BMC within the timeout: check its address, cabling and the BMC network."""

    status = 504
    retryable = True


class BMCUnsupported(BMCError):
    """The BMC (or its driver) cannot do what was asked."""

    status = 501
