"""Every error the bridge raises on purpose, and what each one means to the outside.

BridgeError
├── ConfigError              a bad BRIDGE_ setting          -> exit code 2
├── RequestError             refused webhook                -> its HTTP ``status``
│   ├── InvalidBody          body not a JSON object, too deep -> 400
│   ├── Unauthorized         token missing or wrong         -> 401
│   ├── Forbidden            address not allowed            -> 403
│   ├── RequestTimeout       body not received in time      -> 408
│   ├── TooLarge             body or ID count over a limit  -> 413
│   └── Unavailable          cannot keep the request safe   -> 503 + Retry-After
│       └── SpoolFull        BRIDGE_SPOOL_MAX_BYTES reached -> 503 + Retry-After
├── BrokerError              a publish was not confirmed (retried, never leaves the bridge)
│   ├── BrokerUnavailable    no connection or channel to any node
│   ├── MessageNacked        the broker answered basic.nack
│   ├── MessageReturned      the broker returned a mandatory message as unroutable
│   ├── MessageRefused       the broker closed the channel or connection over what was sent
│   └── ConfirmTimeout       no confirm within the publish timeout
└── SpoolError               the spool cannot be trusted    -> exit code 3
    └── SpoolCorrupt         the spool file is unreadable   -> exit code 3
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of the bridge's own errors."""


class ConfigError(BridgeError):
    """A setting is missing or malformed; ``variable`` names it."""

    exit_code = 2

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class RequestError(BridgeError):
    """A webhook the bridge refuses; ``code`` is a stable machine-readable word."""

    status = 400

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class InvalidBody(RequestError):
    status = 400


class Unauthorized(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class RequestTimeout(RequestError):
    status = 408


class TooLarge(RequestError):
    status = 413


class Unavailable(RequestError):
    status = 503

    def __init__(self, code: str, detail: str, retry_after: int = 5) -> None:
        super().__init__(code, detail)
        self.retry_after = retry_after


class SpoolFull(Unavailable):
    pass


class BrokerError(BridgeError):
    """A publish that did not end in a confirm; the publisher retries it.

    ``failure_class`` names the kind of failure in retry counters and logs (a bounded set).
    """

    failure_class = "unavailable"


class BrokerUnavailable(BrokerError):
    failure_class = "unavailable"


class MessageNacked(BrokerError):
    failure_class = "nacked"


class MessageReturned(BrokerError):
    failure_class = "returned"


class MessageRefused(BrokerError):
    failure_class = "closed"


class ConfirmTimeout(BrokerError):
    failure_class = "timeout"


class SpoolError(BridgeError):
    """The spool cannot keep its promise; the process must stop rather than answer 200."""

    exit_code = 3


class SpoolCorrupt(SpoolError):
    pass
