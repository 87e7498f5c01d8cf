"""A TCP proxy between a MongoDB client and server that counts the commands the client sends,
read off the wire protocol: each OP_MSG (2013) or OP_QUERY (2004) from the client is one
command, named by the first key of its body (`insert`, `find`, `getMore`, `update`, …).

    python command_counter.py LISTEN_PORT CONTROL_PORT UPSTREAM_HOST:PORT

prints `listening` once it accepts connections, then serves until killed. Counts are read over
HTTP on CONTROL_PORT: `GET /` answers `{"total": n, "by_command": {...}}`, `POST /reset`
zeroes them. Connection handshakes and heartbeats (`hello`, `isMaster`, `ismaster`, `ping`)
are counted under their names and listed apart as `monitoring`: the driver sends them on its
own timer, whatever the application does.
"""
import asyncio
import json
import struct
import sys

import bson

MONITORING = {"hello", "ismaster", "isMaster", "ping", "buildInfo", "buildinfo", "saslStart",
              "saslContinue", "endSessions"}
counts = {}


def command_of(op_code, body):
    if op_code == 2013:  # OP_MSG: flagBits, then sections; kind 0 is the command document
        at = 4
        while at < len(body):
            kind = body[at]
            at += 1
            if kind == 0:
                size = struct.unpack_from("<i", body, at)[0]
                doc = bson.decode(body[at:at + size])
                return next(iter(doc), "?")
            size = struct.unpack_from("<i", body, at)[0]
            at += size
        return "?"
    if op_code == 2004:  # OP_QUERY: flags, cstring collection, skip, return, document
        end = body.index(b"\0", 4)
        at = end + 1 + 8
        size = struct.unpack_from("<i", body, at)[0]
        doc = bson.decode(body[at:at + size])
        return next(iter(doc), "?")
    return f"op{op_code}"


async def client_to_server(reader, writer):
    try:
        while True:
            header = await reader.readexactly(16)
            length, _, _, op_code = struct.unpack("<iiii", header)
            body = await reader.readexactly(length - 16)
            try:
                name = command_of(op_code, body)
            except Exception:  # noqa: BLE001 - a frame we cannot name is still counted
                name = "?"
            counts[name] = counts.get(name, 0) + 1
            writer.write(header + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def server_to_client(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    listen_port, control_port = int(sys.argv[1]), int(sys.argv[2])
    host, port = sys.argv[3].rsplit(":", 1)

    async def accept(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(client_to_server(client_reader, server_writer),
                             server_to_client(server_reader, client_writer))

    async def stats(reader, writer):
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        if request.startswith(b"POST /reset"):
            counts.clear()
        monitoring = sum(n for c, n in counts.items() if c in MONITORING)
        body = json.dumps({"total": sum(counts.values()) - monitoring, "monitoring": monitoring,
                           "by_command": counts}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    proxy = await asyncio.start_server(accept, "127.0.0.1", listen_port, reuse_address=True)
    control = await asyncio.start_server(stats, "127.0.0.1", control_port, reuse_address=True)
    print("listening", flush=True)
    async with proxy, control:
        await asyncio.gather(proxy.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
