"""Serves the gateway's media cache to the commune's speakers: ``GET /media/{sha256}`` with Range.

Speakers then fetch over the LAN from the gateway, so a broadcast plays with the uplink down.
Only verified files (named by their sha256) are served; partial downloads are not.
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway.broadcast.media import MediaCache

_SHA = re.compile(r"^[0-9a-f]{64}$")


def make_app(cache: MediaCache) -> web.Application:
    async def get(request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        if not _SHA.fullmatch(sha):
            raise web.HTTPBadRequest(text="media is addressed by its sha256 (64 lowercase hex digits)\n")
        path = cache.path(sha)
        if not path.is_file():
            raise web.HTTPNotFound(text=f"media {sha} is not in this gateway's cache\n")
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    app = web.Application()
    app.router.add_get("/media/{sha256}", get)
    return app


async def serve(cache: MediaCache, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(make_app(cache), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    return runner
