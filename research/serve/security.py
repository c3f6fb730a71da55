"""What stands between the socket and the backlog: the access token, the Host check, CSRF
tokens on writes, the response headers, and file paths confined to a run's own folder.

The server binds to 127.0.0.1 unless told otherwise. Anywhere else it needs a token: a
browser presents it once as ``?token=...`` (it is then kept in an HttpOnly, SameSite=Strict
cookie), a script as ``Authorization: Bearer ...``; both are compared in constant time. The
Host header must name the address served (or localhost), so a page on another site cannot
reach the server through DNS rebinding. Writes are POST only and carry a CSRF token derived
from a secret made at start; GET never changes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from research.errors import ResearchError

TOKEN_COOKIE = "research_token"
# Scripts and styles only from this server's /static/; images also as data: URIs (the
# review's PNG charts); forms post only here; no framing, no plugins.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# An output notebook is someone else's HTML (its outputs may hold scripts): shown under a
# policy that runs none of it, in a sandbox.
NOTEBOOK_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'self'"
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_token(host: str, token: str | None) -> str | None:
    """The token the server will demand: ``token`` if given; on a non-loopback address one
    is required, and made here when none is given. An empty ``--token`` is refused."""
    if token is not None:
        if len(token) < 16:
            raise ResearchError("--token must be at least 16 characters")
        return token
    if is_loopback(host):
        return None
    return secrets.token_urlsafe(24)


@dataclass
class Guard:
    """The server's secrets and the checks made on every request."""

    host: str
    token: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def csrf_token(self) -> str:
        return hmac.new(self.secret, b"csrf", hashlib.sha256).hexdigest()

    def check_csrf(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf_token.encode())

    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        name = name.strip("[]").lower()
        allowed = {"localhost", "127.0.0.1", "::1", self.host.strip("[]").lower()}
        if self.host in ("0.0.0.0", "::"):
            return True  # every address of this machine: the token is the guard
        return name in allowed

    def token_ok(self, headers: dict[str, str], query: str) -> tuple[bool, bool]:
        """(allowed, came from the query string: set the cookie)."""
        if self.token is None:
            return True, False
        expected = self.token.encode()
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), expected):
            return True, False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie and hmac.compare_digest(cookie[TOKEN_COOKIE].value.encode(), expected):
            return True, False
        presented = parse_qs(query).get("token", [""])[0]
        if presented and hmac.compare_digest(presented.encode(), expected):
            return True, True
        return False, False


class GuardMiddleware:
    """ASGI middleware: Host and token checks before any route, security headers on every
    response (``NOTEBOOK_CSP`` where a route asks for it with ``x-research-csp: notebook``)."""

    def __init__(self, app, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.guard.host_allowed(headers.get("host")):
            return await _plain(send, 421, "This server answers only to the address it was started on.\n")
        allowed, set_cookie = self.guard.token_ok(headers, scope.get("query_string", b"").decode("latin-1"))
        if not allowed:
            return await _plain(send, 401, "A token is needed: open the address `research serve` printed.\n")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-research-csp"]
                notebook = any(k.lower() == b"x-research-csp" for k, _ in message.get("headers", []))
                present = {k.lower() for k, _ in raw}
                for name, value in HEADERS.items():
                    if name.encode() in present:
                        continue
                    if notebook and name == "content-security-policy":
                        value = NOTEBOOK_CSP
                    if notebook and name == "x-frame-options":
                        value = "SAMEORIGIN"
                    raw.append((name.encode(), value.encode()))
                if set_cookie:
                    raw.append((b"set-cookie", f"{TOKEN_COOKIE}={self.guard.token}; HttpOnly; SameSite=Strict; Path=/".encode()))
                message = {**message, "headers": raw}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in HEADERS.items())]})
    await send({"type": "http.response.body", "body": body})


def file_in_folder(folder: Path, relative: str) -> Path | None:
    """``relative`` inside ``folder`` as a regular file, or None: a path that climbs out
    (``..``, an absolute path, a symlink anywhere along it leading outside) is refused."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")):
        return None
    try:
        root = folder.resolve(strict=True)
        target = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target == root or not target.is_relative_to(root):
        return None
    try:
        st = os.stat(target)
    except OSError:
        return None
    return target if stat.S_ISREG(st.st_mode) else None
