#!/usr/bin/env python3
"""An HTTP/3 client on aioquic, an implementation independent of quinn and h3,
for Portico's interoperability test (tests/h3.rs).

Usage: h3_client.py ADDR AUTHORITY CA_FILE REQUESTS_JSON
  ADDR           IP:PORT to send UDP to
  AUTHORITY      :authority and TLS server name (e.g. localhost:8443)
  CA_FILE        PEM file of the certificate(s) to trust
  REQUESTS_JSON  [{"method": "GET", "path": "/x", "headers": [["k", "v"]], "body": "..."}]

All requests run concurrently on one connection. Prints one JSON array, one
object per request: status, headers, body (text or null), body_length,
body_sha256, trailers, alpn. Exits 2 when aioquic is missing.
"""
import asyncio, hashlib, json, sys

try:
    from aioquic.asyncio import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamReset
except ImportError:
    print("aioquic is not installed", file=sys.stderr)
    sys.exit(2)


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._streams = {}

    async def request(self, authority, req):
        sid = self._quic.get_next_available_stream_id()
        body = req.get("body", "").encode()
        head = [(b":method", req["method"].encode()), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", req["path"].encode())]
        head += [(k.lower().encode(), v.encode()) for k, v in req.get("headers", [])]
        self._http.send_headers(sid, head, end_stream=not body)
        if body:
            self._http.send_data(sid, body, end_stream=True)
        state = {"future": self._loop.create_future(), "head": None, "trailers": None, "body": bytearray()}
        self._streams[sid] = state
        self.transmit()
        return await asyncio.wait_for(state["future"], 30)

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self._streams:
            fut = self._streams[event.stream_id]["future"]
            if not fut.done():
                fut.set_exception(RuntimeError(f"stream reset, code {event.error_code:#x}"))
        for ev in self._http.handle_event(event):
            st = self._streams.get(ev.stream_id)
            if st is None:
                continue
            if isinstance(ev, HeadersReceived):
                st["trailers" if st["head"] else "head"] = ev.headers
            elif isinstance(ev, DataReceived):
                st["body"] += ev.data
            if ev.stream_ended and not st["future"].done():
                st["future"].set_result(st)


def describe(st, alpn):
    fields = lambda hs: {k.decode(): v.decode() for k, v in hs or []}
    head, body = fields(st["head"]), bytes(st["body"])
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = None
    return {"status": int(head.pop(":status")), "headers": head, "body": text,
            "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "trailers": fields(st["trailers"]), "alpn": alpn}


async def main(addr, authority, ca_file, requests):
    host, port = addr.rsplit(":", 1)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               server_name=authority.rsplit(":", 1)[0])
    config.load_verify_locations(ca_file)
    async with connect(host, int(port), configuration=config, create_protocol=H3Client) as client:
        done = await asyncio.gather(*(client.request(authority, r) for r in requests))
        alpn = client._quic.tls.alpn_negotiated
        print(json.dumps([describe(st, alpn) for st in done]))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
