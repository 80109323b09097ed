"""The baseline: the smallest reasonable aiohttp pass-through proxy (one shared ClientSession, no
checks, no rewriting). ``python benchmarks/bare_proxy.py UPSTREAM_ORIGIN PORT``"""

import sys

import aiohttp
from aiohttp import web

UPSTREAM, PORT = sys.argv[1].rstrip("/"), int(sys.argv[2])
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = aiohttp.ClientSession()
    yield
    await app[SESSION].close()


async def forward(request: web.Request) -> web.Response:
    async with request.app[SESSION].request(
        request.method, UPSTREAM + request.path_qs, data=await request.read()
    ) as upstream:
        return web.Response(
            status=upstream.status, body=await upstream.read(), content_type=upstream.content_type
        )


app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_route("*", "/{tail:.*}", forward)
web.run_app(app, host="127.0.0.1", port=PORT, print=None, access_log=None)
