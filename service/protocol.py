"""The HTTP/1.1 layer under the app: what the server answers to bytes that never become a
request the app sees.

uvicorn parses requests with h11 and answers anything h11 refuses (a malformed request
line or header, a header section over h11's buffer limit) with a plain-text 400 of its
own, before any ASGI code runs, so no exception handler or middleware can touch it.
:class:`ProblemH11Protocol` is uvicorn's h11 protocol with that one answer replaced: the
problem document of :class:`pda.errors.MalformedRequestError` (400) or, for a request
line and header section over :data:`MAX_HEADER_BYTES`, of
:class:`pda.errors.HeadersTooLargeError` (431, h11's own status hint), made by
:func:`pda.problems.to_problem` as every other answer is. ``pda serve`` runs uvicorn with
it (:func:`uvicorn_options`).

What stays outside the server's reach (docs/api.md): a connection closed before a
request line ends (nothing to answer), TLS and proxies in front of it (an ingress answers
its own 400/413/431 pages for what it refuses first), and uvicorn's own 500 when an ASGI
app fails to start a response, which the app's catch-all handler prevents.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pda.errors import HeadersTooLargeError, MalformedRequestError, ProblemError
from pda.problems import PROBLEM_JSON, status_of, to_problem

#: the most bytes a request line plus its header fields may have (h11's default buffer
#: limit, named so that docs and tests can say it); more is a 431 problem
MAX_HEADER_BYTES = 16 * 1024


def header_bytes(request: h11.Request) -> int:
    """The request line and header fields' size as sent (``name: value`` lines)."""
    line = len(request.method) + len(request.target) + 11  # "M T HTTP/1.1\r\n"
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers)


def protocol_problem(exc: h11.RemoteProtocolError | None) -> ProblemError:
    """The problem of what h11 refused: 431 where it says so, else 400."""
    if exc is not None and exc.error_status_hint == 431:
        return HeadersTooLargeError(
            f"the request line and header fields exceed {MAX_HEADER_BYTES} bytes; send "
            "fewer or shorter headers (the image goes in the body)")
    reason = str(exc)[:200] if exc is not None else "unreadable"
    return MalformedRequestError(f"not a valid HTTP/1.1 request: {reason}")


#: after answering a refused request, the unread rest of it is read and dropped for this
#: long (or this many bytes) before the connection closes: closing a socket with unread
#: data sends a reset, which makes the client drop the answer it has not read yet (a
#: client still sending 200 kB of headers would see "connection reset", not the 431)
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering protocol errors with problem documents."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused: h11.RemoteProtocolError | None = None
        self._drained: int | None = None  # bytes dropped since the answer, once answered
        next_event = self.conn.next_event

        def recording_next_event() -> Any:
            # uvicorn catches h11's error and passes on only a fixed message; the error
            # itself says which status fits (its error_status_hint)
            try:
                event = next_event()
                # h11 bounds only a header section still incomplete in its buffer: one
                # that arrives whole in one read (up to 256 KiB) passes, so the limit is
                # checked here on every request, however its bytes arrived
                if isinstance(event, h11.Request) and header_bytes(event) > MAX_HEADER_BYTES:
                    raise h11.RemoteProtocolError("header section too large",
                                                  error_status_hint=431)
                return event
            except h11.RemoteProtocolError as exc:
                self._refused = exc
                raise

        self.conn.next_event = recording_next_event  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        problem = protocol_problem(self._refused)
        body = json.dumps(to_problem(problem)).encode()
        status = status_of(problem)
        headers = [(b"content-type", PROBLEM_JSON.encode()),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=status, headers=headers,
                                       reason=HTTPStatus(status).phrase.encode()),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response had already begun: nothing more to say
            self.transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        """Close our side (the answer is complete) and drop what the client still sends,
        then close (:data:`LINGER_SECONDS`)."""
        self._drained = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._drained is None:
            super().data_received(data)
            return
        self._drained += len(data)
        if self._drained > LINGER_BYTES:
            self.transport.close()

    def eof_received(self) -> None:
        if self._drained is None:
            super().eof_received()
            return
        self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """What ``uvicorn.run`` needs to use :class:`ProblemH11Protocol`."""
    return {"http": ProblemH11Protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
