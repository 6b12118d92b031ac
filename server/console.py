"""The web console at ``/``: one static page for trying sessions in a browser.

The page is plain HTML, CSS and ES modules with no build step; everything it
does goes through the public HTTP API and the realtime channels with the API
token the user pastes (kept in ``sessionStorage`` by the page, never sent as
a cookie). This module only serves the page shell, with headers that keep a
page holding a bearer token from being framed, sniffed or leaking its URL,
and a Content-Security-Policy that allows scripts and styles from this
origin only (the page builds its DOM with ``textContent``, never
``innerHTML``, so server text cannot become markup).

``/static/`` (the console's modules beside the browser realtime client
``sessionstream.js``) is served by ``server.realtime``, the owner of that
client; this module adds only ``/``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

INDEX = Path(__file__).resolve().parent / "static" / "index.html"

#: same-origin scripts, styles, images and sockets only; no framing, no plugins
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # the shell is tiny; always revalidate so a deploy never pairs old HTML with new modules
    "Cache-Control": "no-cache",
}


async def console_page(request: web.Request) -> web.StreamResponse:
    """The single-page console; the API token is pasted in the page, so no auth here."""
    return web.FileResponse(INDEX, headers=HEADERS)


def install(app: web.Application) -> None:
    app.router.add_get("/", console_page)
