"""The sans-IO HTTP/2 client of DoH upstreams and its helpers, fed bytes alone.

Why: :mod:`dns2dot.protocol.http2` speaks HTTP/2 by hand for speed
(docs/ARCHITECTURE.md, "upstream"); ``h2``'s server side (and ``hpack``) is the
reference it is tested against, as dnspython is for DNS. Bytes from the server may be
split anywhere and may be anything: property tests check both.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from dns2dot.protocol import http2
from dns2dot.protocol.doh import (
    MAX_BODY,
    Http1Reader,
    StaticHeaderEncoder,
    encode_header_block,
    http1_request,
    request_headers,
)

AUTHORITY = "dns.test:8443"
PATH = "/dns-query"
CT = "application/dns-message"


def server(settings: dict[int, int] | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    if settings:
        conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
    conn.initiate_connection()
    return conn


def pair(
    settings: dict[int, int] | None = None,
) -> tuple[http2.H2Client, h2.connection.H2Connection, list[http2.Event]]:
    """A client and an h2 server that have exchanged prefaces and SETTINGS."""
    client, srv = http2.H2Client(AUTHORITY, PATH), server(settings)
    srv.receive_data(client.data_to_send())
    events = client.receive(srv.data_to_send())
    srv.receive_data(client.data_to_send())  # the SETTINGS ACK
    return client, srv, events


def requests_of(events: list[h2.events.Event]) -> dict[int, tuple[dict[bytes, bytes], bytes]]:
    out: dict[int, tuple[dict[bytes, bytes], bytes]] = {}
    for event in events:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            out[event.stream_id] = ({bytes(k): bytes(v) for k, v in event.headers}, b"")
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            headers, body = out[event.stream_id]
            out[event.stream_id] = (headers, body + event.data)
    return out


def respond(
    srv: h2.connection.H2Connection,
    stream_id: int,
    body: bytes,
    *,
    status: str = "200",
    extra: list[tuple[str, str]] | None = None,
) -> None:
    headers = [(":status", status), ("content-type", CT), ("content-length", str(len(body)))]
    srv.send_headers(stream_id, headers + (extra or []))
    srv.send_data(stream_id, body, end_stream=True)


# -- requests ----------------------------------------------------------------------------


def test_requests_as_h2_reads_them() -> None:
    """POSTs with the DoH headers and the body, each on its own stream, END_STREAM set."""
    client, srv, events = pair()
    assert events == [http2.SettingsChanged(client.max_streams)] and client.settled
    bodies = [bytes([i]) * (20 + 128 * i) for i in range(4)]
    ids = [client.request(body) for body in bodies]
    assert ids == [1, 3, 5, 7]
    got = srv.receive_data(client.data_to_send())
    ended = [e.stream_id for e in got if isinstance(e, h2.events.StreamEnded)]
    assert ended == ids
    for stream_id, body in zip(ids, bodies, strict=True):
        headers, received = requests_of(got)[stream_id]
        assert received == body
        assert headers == {
            b":method": b"POST",
            b":scheme": b"https",
            b":authority": AUTHORITY.encode(),
            b":path": PATH.encode(),
            b"accept": CT.encode(),
            b"content-type": CT.encode(),
            b"content-length": str(len(body)).encode(),
        }


def test_flow_control_holds_the_body_back() -> None:
    """A server window of 10 octets: 10 go at once, the rest after WINDOW_UPDATE."""
    client, srv, _ = pair({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id = client.request(b"x" * 25)
    got = srv.receive_data(client.data_to_send())
    assert requests_of(got)[stream_id][1] == b"x" * 10
    assert not any(isinstance(e, h2.events.StreamEnded) for e in got)
    srv.increment_flow_control_window(100, stream_id=stream_id)
    assert client.receive(srv.data_to_send()) == []
    got = srv.receive_data(client.data_to_send())
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"x" * 15
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b":method", b":path", b"accept", b"x-other", b"content-length"]),
            st.binary(min_size=0, max_size=300).map(lambda b: bytes(c % 94 + 33 for c in b)),
        ),
        max_size=8,
    ),
    st.lists(st.integers(0, 4096), max_size=3),
)
def test_header_blocks_decode_as_encoded(
    headers: list[tuple[bytes, bytes]], sizes: list[int]
) -> None:
    """Any header list, after any table size changes: hpack reads back what was encoded,
    and a block never touches the dynamic table."""
    encoder, decoder = StaticHeaderEncoder(), hpack.Decoder()
    for size in sizes:
        encoder.header_table_size = size
    for _ in range(2):  # the second block comes from the cache
        assert [tuple(h) for h in decoder.decode(encoder.encode(headers), raw=True)] == headers
        assert not decoder.header_table.dynamic_entries
    if sizes:
        assert decoder.header_table.maxsize == sizes[-1]
    assert encode_header_block(headers) == encoder.encode(headers)


# -- responses -----------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(st.data())
def test_responses_split_anywhere(data: st.DataObject) -> None:
    """Responses (some with headers h2 puts in its dynamic table, some with 1xx before,
    padding, CONTINUATION) come out whole, in order, however the bytes are split."""
    client, srv, _ = pair()
    count = data.draw(st.integers(1, 6))
    ids = [client.request(b"q" * 30) for _ in range(count)]
    srv.receive_data(client.data_to_send())
    expected = []
    for stream_id in ids:
        body = data.draw(st.binary(min_size=0, max_size=20000))
        extra = [("x-tag", data.draw(st.sampled_from(["a", "b", "c" * 17000])))]
        if data.draw(st.booleans()):
            srv.send_headers(stream_id, [(":status", "103")])
        status = data.draw(st.sampled_from(["200", "404"]))
        length = str(len(body))
        headers = [(":status", status), ("content-type", CT), ("content-length", length)]
        srv.send_headers(stream_id, [*headers, *extra])
        srv.send_data(stream_id, body, end_stream=True, pad_length=data.draw(st.integers(0, 5)))
        expected.append(http2.Response(stream_id, status, CT, body))
    wire = srv.data_to_send()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    events: list[http2.Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        events += client.receive(wire[start:end])
    assert events == expected
    assert not client.streams


def test_decoded_blocks_follow_the_dynamic_table() -> None:
    """The same block bytes mean different headers once the table has changed: the
    kept decoding is not used then."""
    client, srv, _ = pair()
    seen = []
    for round_ in range(6):
        stream_id = client.request(b"q" * 30)
        srv.receive_data(client.data_to_send())
        # h2 indexes these, so the block shrinks to table references that shift.
        respond(srv, stream_id, b"a" * (12 + round_ % 2), extra=[("x-n", str(round_ % 3))])
        (event,) = client.receive(srv.data_to_send())
        assert isinstance(event, http2.Response)
        seen.append(event.body)
    assert seen == [b"a" * (12 + r % 2) for r in range(6)]
    # And the kept decodings say what hpack says for the same bytes now.
    reference = hpack.Decoder()
    encoder = hpack.Encoder()
    for n in (1, 2, 1, 2):
        block = encoder.encode([(":status", "200"), ("x-n", str(n))])
        assert client._decode(block) == [
            (bytes(k), bytes(v)) for k, v in reference.decode(block, raw=True)
        ]


def test_reset_goaway_ping_settings() -> None:
    client, srv, _ = pair()
    ids = [client.request(b"q" * 30) for _ in range(4)]
    srv.receive_data(client.data_to_send())
    srv.reset_stream(ids[0], h2.errors.ErrorCodes.REFUSED_STREAM)
    assert client.receive(srv.data_to_send()) == [http2.StreamReset(ids[0], 7)]
    srv.ping(b"12345678")
    srv.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 7})
    assert client.receive(srv.data_to_send()) == [http2.SettingsChanged(7)]
    got = srv.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.PingAckReceived) for e in got)
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in got)
    # A graceful GOAWAY, by hand (h2 answers nothing after its own).
    payload = ids[1].to_bytes(4, "big") + bytes(4)
    events = client.receive(http2.frame(http2.Frame.GOAWAY, 0, 0, payload))
    assert events == [http2.GoAway(ids[1], 0, (ids[2], ids[3]))]
    assert client.goaway and list(client.streams) == [ids[1]]
    respond(srv, ids[1], b"answer" * 3)
    assert client.receive(srv.data_to_send()) == [http2.Response(ids[1], "200", CT, b"answer" * 3)]


def test_oversized_answer_is_reset() -> None:
    """A content-length beyond any DNS message, or a body growing beyond it: the
    stream is reset (CANCEL) and reported failed, once."""
    client, srv, _ = pair()
    first, second = client.request(b"q" * 30), client.request(b"q" * 30)
    srv.receive_data(client.data_to_send())
    srv.send_headers(first, [(":status", "200"), ("content-type", CT), ("content-length", "70000")])
    srv.send_headers(second, [(":status", "200"), ("content-type", CT)])
    for _ in range(5):
        srv.send_data(second, b"z" * 16384)
    events = client.receive(srv.data_to_send())
    assert [type(e) for e in events] == [http2.StreamFailed, http2.StreamFailed]
    assert {e.stream_id for e in events} == {first, second}
    got = srv.receive_data(client.data_to_send())
    resets = {e.stream_id: e.error_code for e in got if isinstance(e, h2.events.StreamReset)}
    assert resets == {first: h2.errors.ErrorCodes.CANCEL, second: h2.errors.ErrorCodes.CANCEL}
    assert MAX_BODY == 65535


def test_bad_stream_window_update_fails_the_stream() -> None:
    """A WINDOW_UPDATE of 0 on one of our streams resets it (FLOW_CONTROL_ERROR) and
    says so, so the query is not left waiting for a response that cannot come."""
    client, srv, _ = pair()
    stream = client.request(b"q" * 30)
    srv.receive_data(client.data_to_send())
    zero = http2.frame(http2.Frame.WINDOW_UPDATE, 0, stream, bytes(4))
    events = client.receive(zero)
    assert events == [http2.StreamFailed(stream, "bad WINDOW_UPDATE on the stream")]
    got = srv.receive_data(client.data_to_send())
    resets = {e.stream_id: e.error_code for e in got if isinstance(e, h2.events.StreamReset)}
    assert resets == {stream: h2.errors.ErrorCodes.FLOW_CONTROL_ERROR}


def test_push_promise_breaks_the_connection() -> None:
    client, _, _ = pair()
    events = client.receive(http2.frame(http2.Frame.PUSH_PROMISE, 0x4, 1, bytes(4) + b"\x82"))
    assert [type(e) for e in events] == [http2.ConnectionBroken]
    assert client.broken and client.receive(b"anything") == []
    assert client.data_to_send().endswith(bytes(4) + (1).to_bytes(4, "big"))  # GOAWAY


@given(st.binary(max_size=400))
def test_garbage_never_raises(data: bytes) -> None:
    """Whatever a server sends, the client returns events (at worst ConnectionBroken)."""
    client, _, _ = pair()
    client.request(b"q" * 30)
    events = client.receive(data)
    assert all(isinstance(e, http2.Event.__args__) for e in events)  # type: ignore[attr-defined]
    client.data_to_send()


# -- HTTP/1.1 ------------------------------------------------------------------------------


@given(st.data())
def test_http1_responses_split_anywhere(data: st.DataObject) -> None:
    bodies = data.draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    wire = b"".join(
        f"HTTP/1.1 200 OK\r\nContent-Type: {CT}\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
        for b in bodies
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    reader = Http1Reader()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += reader.feed(wire[start:end])
    assert [r.body for r in got] == bodies and reader.broken is None
    assert all(r.status == "200" and r.content_type == CT and r.keep_alive for r in got)


def test_http1_broken_responses() -> None:
    for wire in (
        b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\n",  # no length
        b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n",  # longer than DNS allows
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000,  # a head without end
    ):
        reader = Http1Reader()
        assert reader.feed(wire) == [] and reader.broken is not None, wire
    closing = Http1Reader().feed(
        b"HTTP/1.1 503 No\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert [(r.status, r.keep_alive) for r in closing] == [("503", False)]
    assert http1_request("h:1", "/p", b"xy") == (
        b"POST /p HTTP/1.1\r\nHost: h:1\r\nAccept: application/dns-message\r\n"
        b"Content-Type: application/dns-message\r\nContent-Length: 2\r\n\r\nxy"
    )
    assert request_headers("h", "/p", 3)[-1] == (b"content-length", b"3")


def test_endless_continuation_breaks_the_connection() -> None:
    """CONTINUATION frames without end are bounded: the connection is broken, not
    grown without limit."""
    client, _, _ = pair()
    stream_id = client.request(b"q" * 30)
    events = client.receive(http2.frame(http2.Frame.HEADERS, 0, stream_id, b"\x88"))
    for _ in range(10):
        events += client.receive(
            http2.frame(http2.Frame.CONTINUATION, 0, stream_id, b"\x00" * 16384)
        )
    assert [type(e) for e in events] == [http2.ConnectionBroken]


def test_http1_content_length_must_be_ascii_digits() -> None:
    """'²' is a digit to str.isdigit but not to int(): the response is broken, never a
    ValueError out of the reader (review finding)."""
    reader = Http1Reader()
    wire = "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n".encode("latin-1")
    assert reader.feed(wire) == [] and reader.broken is not None
