"""A TCP relay from the node's address to the API server on loopback.

    python3 api_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT

The local control plane's API server listens on 127.0.0.1 only; pods reach it at
the `kubernetes` Service, whose EndpointSlice (hack/realnode/up.sh) points here.
Bytes pass through untouched: TLS ends at the API server, whose certificate names
the Service's ClusterIP, so in-cluster clients verify it as usual.
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen_host, listen_port)
    print(f"relaying {listen_host}:{listen_port} -> {target_host}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, target, target_port = sys.argv[1:5]
    asyncio.run(main(host, int(port), target, int(target_port)))
