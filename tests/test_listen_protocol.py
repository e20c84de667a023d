"""The pure halves of the encrypted listeners: RFC 8484 requests and statuses, the
HTTP/1.1 reader, Cache-Control, and the EDNS options answered to encrypted clients.

Why: what a DoH request means and which status answers it is decided without I/O
(dns2dot/protocol/http.py), as is the padding and keepalive of answers
(dns2dot/protocol/encrypted.py), so they are checked with bytes alone, against
dnspython where a DNS message is involved, and with hypothesis where the bytes come
from a client (docs/ARCHITECTURE.md, "protocol").
"""

from __future__ import annotations

import base64

import dns.edns
import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from dns2dot.protocol import encrypted, http

PATH = "/dns-query"


def _query(*, edns: bool = False, options: list[dns.edns.Option] | None = None) -> bytes:
    q = dns.message.make_query("a.example.test.", "A", use_edns=0 if edns else False)
    if options is not None:
        q.use_edns(0, options=options)
    q.id = 0
    return q.to_wire()


def _answer(query: bytes, ttls: tuple[int, ...] = (300,), opt: bool = True) -> bytes:
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    for i, ttl in enumerate(ttls):
        r.answer.append(dns.rrset.from_text("a.example.test.", ttl, "IN", "A", f"192.0.2.{i + 1}"))
    if not opt:
        r.use_edns(False)
    return r.to_wire(max_size=65535)


# -- requests -----------------------------------------------------------------------------


def test_get_decodes_base64url_without_padding() -> None:
    query = _query()
    param = base64.urlsafe_b64encode(query).rstrip(b"=").decode()
    assert http.dns_request("GET", f"{PATH}?dns={param}", None, b"", PATH) == query
    assert http.dns_request("GET", f"{PATH}?ct=x&dns={param}&z=1", None, b"", PATH) == query


def test_get_tolerates_padding() -> None:
    query = _query()
    param = base64.urlsafe_b64encode(query).decode()
    assert http.dns_request("GET", f"{PATH}?dns={param}", None, b"", PATH) == query


def test_post_takes_the_body() -> None:
    query = _query()
    assert http.dns_request("POST", PATH, "application/dns-message", query, PATH) == query
    assert http.dns_request("POST", PATH, "Application/DNS-Message; x=y", query, PATH) == query


def test_statuses() -> None:
    query = _query()
    param = http.encode_dns_param(query)

    def status(method: str, target: str, ctype: str | None = None, body: bytes = b"") -> int:
        result = http.dns_request(method, target, ctype, body, PATH)
        assert isinstance(result, http.Rejection)
        return result.status

    assert status("GET", f"/other?dns={param}") == 404
    assert status("GET", "/") == 404
    assert status("PUT", PATH, "application/dns-message", query) == 405
    assert status("DELETE", PATH) == 405
    assert status("GET", PATH) == 400  # no dns parameter
    assert status("GET", f"{PATH}?dns=") == 400
    assert status("GET", f"{PATH}?dns=%%%") == 400
    assert status("GET", f"{PATH}?dns=A") == 400  # one base64 character is no byte
    assert status("GET", f"{PATH}?dns={param}&dns={param}") == 400
    assert status("GET", f"{PATH}?dns={http.encode_dns_param(b'short')}") == 400
    response = bytearray(query)
    response[2] |= 0x80  # QR: an answer, not a query
    assert status("GET", f"{PATH}?dns={http.encode_dns_param(bytes(response))}") == 400
    assert status("POST", PATH, "text/plain", query) == 415
    assert status("POST", PATH, None, query) == 415
    assert status("POST", PATH, "application/dns-message", b"") == 400
    assert status("POST", PATH, "application/dns-message", b"\x00" * 65536) == 413


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_query_string_decodes_or_is_refused(text: str) -> None:
    result = http.decode_dns_param(text)
    assert result is None or isinstance(result, bytes)


@given(st.binary(min_size=0, max_size=600))
@settings(max_examples=300, deadline=None)
def test_param_round_trip(message: bytes) -> None:
    assert http.decode_dns_param("dns=" + http.encode_dns_param(message)) == (message or None)


# -- Cache-Control --------------------------------------------------------------------------


def test_max_age_is_the_smallest_ttl() -> None:
    answer = _answer(_query(), ttls=(300, 42, 3600))
    assert http.cache_control(answer) == "max-age=42"
    assert ("cache-control", "max-age=42") in http.answer_headers(answer)


def test_negative_answer_takes_the_soa_ttl() -> None:
    q = dns.message.from_wire(_query())
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.authority.append(
        dns.rrset.from_text("example.test.", 60, "IN", "SOA", "ns. host. 1 3600 600 86400 300")
    )
    assert http.cache_control(r.to_wire()) == "max-age=60"


def test_failures_and_empty_answers_are_not_kept() -> None:
    q = dns.message.from_wire(_query())
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.SERVFAIL)
    assert http.cache_control(r.to_wire()) == "no-store"
    assert http.cache_control(dns.message.make_response(q).to_wire()) == "no-store"


def test_opt_ttl_is_not_a_ttl() -> None:
    # The OPT record's TTL field holds flags (DO = 0x8000), not a lifetime.
    q = dns.message.make_query("a.example.test.", "A", use_edns=0, want_dnssec=True)
    answer = _answer(q.to_wire(), ttls=(300,))
    assert http.cache_control(answer) == "max-age=300"


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_min_ttl_never_raises(data: bytes) -> None:
    result = http.min_ttl(data)
    assert result is None or 0 <= result <= 0x7FFFFFFF


# -- HTTP/1.1 --------------------------------------------------------------------------------


def _request(
    method: str = "GET", target: str = PATH, headers: str = "", body: bytes = b""
) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nhost: dns.test\r\n{headers}\r\n".encode()
    return head + body


def test_reader_pipelined_requests_any_split() -> None:
    query = _query()
    data = (
        _request(target=f"{PATH}?dns={http.encode_dns_param(query)}")
        + _request(
            "POST",
            headers=f"content-type: application/dns-message\r\ncontent-length: {len(query)}\r\n",
            body=query,
        )
    ) * 3
    for size in (1, 7, len(data)):
        reader = http.Http1Reader()
        got: list[http.Http1Request] = []
        for start in range(0, len(data), size):
            requests, rejection = reader.feed(data[start : start + size])
            assert rejection is None
            got += requests
        assert [r.method for r in got] == ["GET", "POST"] * 3
        assert all(r.keep_alive for r in got)
        assert got[1].body == query
        assert got[1].content_type == "application/dns-message"


def test_reader_limits() -> None:
    reader = http.Http1Reader()
    _, rejection = reader.feed(_request(headers="x: " + "a" * http.MAX_HEADER_BYTES + "\r\n"))
    assert rejection is not None and rejection.status == 431
    reader = http.Http1Reader()
    _, rejection = reader.feed(b"GET /" + b"a" * (http.MAX_HEADER_BYTES + 10))
    assert rejection is not None and rejection.status == 414
    reader = http.Http1Reader()
    _, rejection = reader.feed(_request("POST", headers="content-length: 70000\r\n"))
    assert rejection is not None and rejection.status == 413
    reader = http.Http1Reader()
    _, rejection = reader.feed(_request("POST", headers="transfer-encoding: chunked\r\n"))
    assert rejection is not None and rejection.status == 411
    reader = http.Http1Reader()
    _, rejection = reader.feed(b"\x16\x03\x01 garbage\r\n\r\n")
    assert rejection is not None and rejection.status == 400
    assert reader.feed(_request()) == ([], None)  # nothing is read after a rejection


def test_reader_connection_close() -> None:
    reader = http.Http1Reader()
    requests, rejection = reader.feed(_request(headers="connection: close\r\n") + _request())
    assert rejection is None
    assert len(requests) == 1 and not requests[0].keep_alive


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_reader_never_raises(data: bytes) -> None:
    reader = http.Http1Reader()
    requests, rejection = reader.feed(data)
    assert rejection is None or rejection.status in http.REASONS
    assert all(len(r.body) <= http.MAX_BODY for r in requests)


def test_response_bytes() -> None:
    raw = http.http1_response(200, [("content-length", "2")], b"ok", keep_alive=False)
    assert raw == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


# -- EDNS for encrypted clients ----------------------------------------------------------------


def test_what_the_client_asks() -> None:
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 20)
    keep = dns.edns.GenericOption(11, b"")
    assert encrypted.client_asks(_query()) == encrypted.Asks.NOTHING
    assert encrypted.client_asks(_query(edns=True)) == encrypted.Asks.NOTHING
    assert encrypted.client_asks(_query(options=[pad])) == encrypted.Asks.PADDING
    assert encrypted.client_asks(_query(options=[keep])) == encrypted.Asks.KEEPALIVE
    both = encrypted.client_asks(_query(options=[keep, pad]))
    assert both == encrypted.Asks.PADDING | encrypted.Asks.KEEPALIVE


def test_padded_answer_is_a_multiple_of_468() -> None:
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 20)
    keep = dns.edns.GenericOption(11, b"")
    query = _query(options=[pad, keep])
    for count in (1, 20, 60):
        answer = _answer(query, ttls=(300,) * count)
        asks = encrypted.client_asks(query)
        finished = encrypted.finish_answer(answer, asks, 10.0)
        assert len(finished) % encrypted.RESPONSE_BLOCK == 0
        parsed = dns.message.from_wire(finished)  # dnspython, the reference, reads it
        assert parsed.answer == dns.message.from_wire(answer).answer
        options = {o.otype: o for o in parsed.options}
        assert dns.edns.OptionType.PADDING in options
        keepalive = options[dns.edns.OptionType(11)]
        assert keepalive.to_wire() == b"\x00\x64"  # 10 s in units of 100 ms


def test_unpadded_query_gets_an_unpadded_answer() -> None:
    query = _query(edns=True)
    answer = _answer(query)
    assert encrypted.finish_answer(answer, encrypted.client_asks(query), 10.0) == answer


def test_answer_without_opt_is_left_alone() -> None:
    answer = _answer(_query(), opt=False)
    asks = encrypted.Asks.PADDING | encrypted.Asks.KEEPALIVE
    assert encrypted.finish_answer(answer, asks, 10.0) == answer


@given(st.binary(max_size=300), st.sampled_from(list(encrypted.Asks)))
@settings(max_examples=500, deadline=None)
def test_finish_answer_never_raises(data: bytes, asks: encrypted.Asks) -> None:
    encrypted.client_asks(data)
    encrypted.finish_answer(data, asks, 10.0)


def test_keepalive_never_pushes_an_answer_past_a_frame() -> None:
    """An answer already at the largest size a frame holds is passed on unchanged
    rather than grown past 65,535 octets by the keepalive option (review finding)."""
    q = dns.message.make_query("a.example.test.", "TXT", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("a.example.test.", 60, "IN", "TXT", '"x"'))
    r.use_edns(0, options=[dns.edns.GenericOption(65001, b"")])
    filler = 65535 - len(r.to_wire())  # an option of our own fills it to the brim
    r.use_edns(0, options=[dns.edns.GenericOption(65001, b"\x00" * filler)])
    big = r.to_wire(max_size=65535)
    assert len(big) == 65535
    out = encrypted.finish_answer(big, encrypted.Asks.KEEPALIVE, 10.0)
    assert len(out) <= 65535
    assert dns.message.from_wire(out).answer == r.answer
