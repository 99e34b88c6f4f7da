"""The HTTP ceiling: the bridge's HTTP stack (aiohttp on uvloop) that only reads the body and answers.

Whatever the bridge does per request costs on top of this; nothing can answer faster here.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"})


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhooks/servio", receive)
    app.router.add_post("/webhooks/servio/{source}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
