"""The bridge a user would write in an afternoon: aiohttp + aio-pika, no spool.

Parse the body, publish each (entity, action, ID) as a persistent, mandatory message and await
its publisher confirm, then answer. Durable in its own way (nothing is answered 200 before
RabbitMQ confirmed it) but every request waits for the broker, one message after the other.
It runs on uvloop like servio-bridge, so the comparison is of the design, not of the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime

import aio_pika
import uvloop
from aiohttp import web

EXCHANGE = web.AppKey("exchange", aio_pika.abc.AbstractExchange)


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    data = json.loads(body)
    exchange = request.app[EXCHANGE]
    source = request.match_info.get("source", "servio")
    delivery_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    count = 0
    for action, entities in data.items():
        for entity, ids in (entities or {}).items():
            for id_ in ids or []:
                action_name, entity_name = action.strip().lower(), entity.strip().lower()
                message = aio_pika.Message(
                    json.dumps(
                        {
                            "entity": entity_name,
                            "action": action_name,
                            "id": id_,
                            "source": source,
                            "delivery_id": delivery_id,
                            "received_at": now.isoformat(),
                        }
                    ).encode(),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    app_id="naive-bridge",
                    message_id=f"{delivery_id}.{action_name}.{entity_name}.{id_}",
                    timestamp=now,
                )
                await exchange.publish(message, f"servio.{entity_name}.{action_name}", mandatory=True)
                count += 1
    return web.json_response({"status": "accepted", "delivery_id": delivery_id, "messages": count})


async def serve(port: int, amqp_url: str, exchange_name: str) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
    app = web.Application()
    app[EXCHANGE] = exchange
    app.router.add_post("/webhooks/servio", receive)
    app.router.add_post("/webhooks/servio/{source}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.amqp_url, args.exchange))


if __name__ == "__main__":
    main()
