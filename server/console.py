"""What browsers load from us: the web console at ``/`` and the browser module's headers.

The console is plain HTML, CSS and ES modules with no build step; everything
it does goes through the public HTTP API and the realtime channels with the
API token the user pastes (kept in ``sessionStorage`` by the page, never sent
as a cookie). This module serves the page shell, with headers that keep a
page holding a bearer token from being framed, sniffed or leaking its URL,
and a Content-Security-Policy that allows scripts and styles from this
origin only (the page builds its DOM with ``textContent``, never
``innerHTML``, so server text cannot become markup).

``/static/`` (the console's modules beside the browser realtime client
``sessionstream.js``) is served by ``server.realtime``, the owner of that
client. This module adds the one header that client needs to be useful
outside our own pages: a module script from another origin is fetched in
CORS mode, and without ``Access-Control-Allow-Origin`` the browser refuses
to run it, so a user's app could not ``import`` it. ``*`` is safe there: the
file is public, the same for everyone, and is fetched without credentials.
The module opens only websockets, which are not subject to CORS, so nothing
else it reaches needs the header. The console's own modules keep the
same-origin default.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

INDEX = Path(__file__).resolve().parent / "static" / "index.html"
STATIC_PREFIX = "/static/"
#: the browser realtime client, importable from any origin
BROWSER_MODULE = STATIC_PREFIX + "sessionstream.js"

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


#: what every file under ``/static/`` gets: the page's own headers but its cache rule,
#: so ``/static/index.html`` is no easier to frame than ``/`` (it used to be)
STATIC_HEADERS = {k: v for k, v in HEADERS.items() if k != "Cache-Control"}


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Page headers on every static file; pages of any origin may import the browser module."""
    if not request.path.startswith(STATIC_PREFIX):
        return
    response.headers.update(STATIC_HEADERS)
    if request.path == BROWSER_MODULE:
        response.headers["Access-Control-Allow-Origin"] = "*"


def install(app: web.Application) -> None:
    app.router.add_get("/", console_page)
    app.on_response_prepare.append(_static_headers)
