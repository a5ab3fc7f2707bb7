"""Who may talk to ``emarray gui``: the token, the Host and the Origin of every request.

Jupyter's model: a fresh random token is printed in the first URL (``/?token=...``); that
request sets a cookie (HttpOnly, SameSite=Strict) and is redirected to the same page without
the token, so it stays out of the history. Scripts send ``Authorization: Bearer TOKEN``. Every
request, pages, the JSON API, the viewer and its data alike, without one of them is answered
403. The Host header must name this machine as the browser reached it (a loopback name when
serving on loopback: a DNS-rebinding page's own name is refused), and a request that carries
an Origin must come from this same host and port (no cross-site POST).
"""
from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import URL
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_PARAM = "token"
#: how long the browser keeps the token (a closed and reopened browser needs no new address
#: while the same gui runs; a new gui has a new token)
COOKIE_DAYS = 7


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def host_name(host_header: str) -> str:
    """The host of a Host header (``[::1]:8765`` -> ``::1``, ``a.b:80`` -> ``a.b``), lower case."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """The host names a request may use: loopback names, and when serving wider the bind
    address, this machine's names and the addresses of its interfaces."""
    hosts = set(LOOPBACK) | {h.lower() for h in extra}
    if bind not in LOOPBACK:
        import socket

        import psutil
        hosts |= {bind.lower(), socket.gethostname().lower(), socket.getfqdn().lower()}
        for addrs in psutil.net_if_addrs().values():
            hosts |= {a.address.split("%")[0].lower() for a in addrs
                      if a.family in (socket.AF_INET, socket.AF_INET6)}
    return hosts


class Guard:
    """ASGI middleware: the token, Host and Origin checks of the module's docs, before the
    app sees a request."""

    def __init__(self, app: Any, *, token: str, hosts: set[str], cookie: str):
        self.app, self.token, self.hosts, self.cookie = app, token, hosts, cookie

    def _valid(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.token.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        refusal = self.refusal(conn)
        if refusal is not None:
            await PlainTextResponse(refusal + "\n", status_code=403)(scope, receive, send)
            return
        query_token = conn.query_params.get(TOKEN_PARAM)
        if query_token is not None and scope.get("method") == "GET" and self._valid(query_token) \
                and "text/html" in conn.headers.get("accept", ""):
            # the first URL, in a browser: keep the token in a cookie, drop it from the address
            params = [(k, v) for k, v in conn.query_params.multi_items() if k != TOKEN_PARAM]
            target = URL(scope=scope).replace_query_params(**dict(params))
            clean = target.path + (f"?{target.query}" if target.query else "")
            response: Response = RedirectResponse(clean, status_code=303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict",
                                path="/", max_age=COOKIE_DAYS * 86400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, conn: HTTPConnection) -> str | None:
        """Why this request is refused (None: it may go on)."""
        host = conn.headers.get("host", "")
        if host_name(host) not in self.hosts:
            return (f"403: Host {host!r} is not this emarray gui (open the address it printed; "
                    "a page of another site cannot reach it)")
        origin = conn.headers.get("origin")
        if origin is not None:
            o = urlsplit(origin)
            if origin == "null" or o.netloc.lower() != host.lower() or o.scheme not in (
                    "http", "https"):
                return f"403: requests from {origin!r} are refused (only this gui's own pages)"
        auth = conn.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if self._valid(bearer) or self._valid(conn.cookies.get(self.cookie)) or \
                self._valid(conn.query_params.get(TOKEN_PARAM)):
            return None
        return ("403: this needs the token emarray gui printed: open the address it printed "
                "(http://...:PORT/?token=...)")
