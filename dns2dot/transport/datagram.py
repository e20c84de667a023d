"""Batched datagram I/O: libc's ``recvmmsg`` and ``sendmmsg`` through ctypes (Linux).

Python's socket module reads and writes one datagram per call; these read up to
``batch`` datagrams in one system call and send every queued answer in one more, as
dnsdist does on its UDP path. Each datagram, its sender's address and its packet-info
ancillary data (``IP_PKTINFO`` / ``IPV6_PKTINFO``: the address it was sent *to*) land
in buffers allocated once; answers are copied into a send arena allocated once, with
the same address and packet info, so a wildcard listener answers from the address its
client asked (as unbound's ``interface-automatic`` does).

Where libc or the symbols are missing (not Linux), :func:`available` says so and the
caller keeps the asyncio datagram endpoint.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final

BATCH: Final = 32  # datagrams per recvmmsg call, and answers per sendmmsg call
SLOT: Final = 65536  # receive buffer per datagram: any UDP payload fits whole
NAME: Final = 128  # bytes for a sockaddr (sockaddr_in6 needs 28)
CONTROL: Final = 64  # bytes for the ancillary data (one pktinfo message needs 32 or 40)
SEND_ARENA: Final = 256 * 1024  # answers queued for one sendmmsg (at least three 64 KiB ones)
MSG_DONTWAIT: Final = 0x40
_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO: Final = getattr(socket, "IPV6_RECVPKTINFO", 49)
_CMSG_DATA: Final = ctypes.sizeof(ctypes.c_size_t) + 8  # cmsghdr: len, level, type
_RETRY_LATER: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR})

Datagram = tuple[bytes, bytes, bytes]  # payload, sender's sockaddr, ancillary data


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_uint16),
        ("addr", ctypes.c_uint32),
        ("zero", ctypes.c_char * 8),
    ]


class _SockaddrIn6(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_uint16),
        ("flowinfo", ctypes.c_uint32),
        ("addr", ctypes.c_char * 16),
        ("scope_id", ctypes.c_uint32),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_HDR: Final = ctypes.sizeof(_Mmsghdr)
_IOVEC: Final = struct.Struct("@PN")  # struct iovec: base, length
_IOV: Final = ctypes.sizeof(_Iovec)


def _libc_calls() -> tuple[Any, Any] | None:
    """recvmmsg and sendmmsg from the C library, or None where there are none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    # int recvmmsg(int fd, struct mmsghdr *, unsigned int vlen, int flags, struct timespec *)
    # int sendmmsg(int fd, struct mmsghdr *, unsigned int vlen, int flags)
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.argtypes = [*send.argtypes, ctypes.c_void_p]
    for call in (recv, send):
        call.restype = ctypes.c_int
    return recv, send


_CALLS = _libc_calls()


def available() -> bool:
    """Whether batched I/O works here (Linux with libc's recvmmsg/sendmmsg), and is not
    switched off with ``DNS2DOT_UDP_BATCH=off`` (the asyncio path then serves)."""
    return (
        _CALLS is not None
        and ctypes.sizeof(ctypes.c_void_p) == 8  # the header offsets below are 64-bit's
        and os.environ.get("DNS2DOT_UDP_BATCH", "on") != "off"
    )


class _Arena:
    """Anonymous memory: untouched pages cost nothing, so 2 MiB of slots is cheap."""

    def __init__(self, size: int) -> None:
        self.area = mmap.mmap(-1, size)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.area))


@dataclass(slots=True)
class _Messages:
    """``count`` mmsghdrs with their buffers, and word views to read and set fields."""

    hdrs: ctypes.Array[_Mmsghdr]
    address: int
    h32: memoryview  # the headers as 32-bit words
    h64: memoryview  # ... and as 64-bit words
    data: _Arena
    names: _Arena
    controls: _Arena
    iovs: ctypes.Array[_Iovec]  # referenced by the headers


def _offset(field: str) -> int:
    offset: int = getattr(_Msghdr, field).offset
    return offset


class DatagramSocket:
    """Batched reads and writes on one bound, non-blocking UDP socket."""

    def __init__(self, sock: socket.socket, *, pktinfo: bool, batch: int = BATCH) -> None:
        if _CALLS is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = _CALLS
        self.sock = sock
        self.fd = sock.fileno()
        self.batch = batch
        self.family = sock.family
        self.pktinfo = pktinfo
        if pktinfo:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._recv = self._headers(batch, SLOT, SLOT * batch)
        self._send = self._headers(batch, 0, SEND_ARENA)
        # A sender's sockaddr is as long every time: the send headers keep that length.
        sockaddr = _SockaddrIn6 if sock.family == socket.AF_INET6 else _SockaddrIn
        self._namesize = ctypes.sizeof(sockaddr)
        for i in range(batch):
            self._send.hdrs[i].msg_hdr.msg_namelen = self._namesize
        send = self._send
        self._send_data = send.data.area  # what queue() writes, bound once
        self._send_base = send.data.address
        self._send_iovs = send.iovs
        self._send_names = send.names.area
        self._queued = 0  # answers in the send arena
        self._sent = 0  # of which sent (the socket's buffer was full)
        self._used = 0  # bytes of the send arena in use
        # The word views index the header arrays: (hdr index * _HDR + field) // size.
        self._controllen = _offset("msg_controllen") // 8
        self._msglen = _Mmsghdr.msg_len.offset // 4

    def _headers(self, count: int, slot: int, data_size: int) -> _Messages:
        """mmsghdr, iovec, name and control arrays for ``count`` messages; with
        ``slot``, message i's data lives at ``i * slot`` of the data arena."""
        hdrs = (_Mmsghdr * count)()
        iovs = (_Iovec * count)()
        data, names, controls = _Arena(data_size), _Arena(NAME * count), _Arena(CONTROL * count)
        for i in range(count):
            iovs[i].iov_base = data.address + i * slot
            iovs[i].iov_len = slot
            hdr = hdrs[i].msg_hdr
            hdr.msg_name = names.address + i * NAME
            hdr.msg_namelen = NAME
            hdr.msg_iov = ctypes.addressof(iovs) + i * _IOV
            hdr.msg_iovlen = 1
            hdr.msg_control = controls.address + i * CONTROL
            hdr.msg_controllen = CONTROL if self.pktinfo else 0
        raw = memoryview(hdrs).cast("B")
        return _Messages(
            hdrs=hdrs,
            address=ctypes.addressof(hdrs),
            h32=raw.cast("I"),
            h64=raw.cast("Q"),
            data=data,
            names=names,
            controls=controls,
            iovs=iovs,
        )

    def receive(self) -> list[Datagram]:
        """Up to ``batch`` datagrams waiting on the socket (none: an empty list)."""
        recv = self._recv
        got = self._recvmmsg(self.fd, recv.address, self.batch, MSG_DONTWAIT, None)
        if got <= 0:
            if got < 0 and ctypes.get_errno() not in _RETRY_LATER:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return []
        h32 = recv.h32
        data = recv.data.area  # an mmap slice is bytes at once, without a memoryview
        names = recv.names.area
        msglen = self._msglen
        size = self._namesize
        per32 = _HDR // 4
        # The kernel sets each msg_namelen to the sockaddr's size, which is as large as
        # the next one needs: only msg_controllen is set back before the next call.
        if not self.pktinfo:
            return [
                (
                    data[i * SLOT : i * SLOT + h32[i * per32 + msglen]],
                    names[i * NAME : i * NAME + size],
                    b"",
                )
                for i in range(got)
            ]
        h64 = recv.h64
        controls = recv.controls.area
        per64 = _HDR // 8
        controllen = self._controllen
        ipv4 = self.family == socket.AF_INET
        out = []
        for i in range(got):
            start = i * SLOT
            payload = data[start : start + h32[i * per32 + msglen]]
            name = names[i * NAME : i * NAME + size]
            control = b""
            used = h64[i * per64 + controllen]
            if used:
                base = i * CONTROL
                if ipv4:
                    # in_pktinfo's ifindex: 0 lets the routing table pick the
                    # interface; the source address stays the one asked.
                    controls[base + _CMSG_DATA : base + _CMSG_DATA + 4] = b"\0\0\0\0"
                control = controls[base : base + used]
            h64[i * per64 + controllen] = CONTROL  # the kernel shrank it: room again
            out.append((payload, name, control))
        return out

    @property
    def queued(self) -> int:
        return self._queued

    def queue(self, payload: bytes, name: bytes, control: bytes) -> bool:
        """Put one answer in the send arena; False when it is full (flush first).

        ``name`` and ``control`` are as :meth:`receive` gave them for the query.
        """
        j = self._queued
        start = self._used
        end = start + len(payload)
        if j >= self.batch or end > SEND_ARENA:
            return False
        size = self._namesize
        if len(name) != size:
            raise ValueError("not a sockaddr of this socket's family")
        self._send_data[start:end] = payload
        _IOVEC.pack_into(self._send_iovs, j * _IOV, self._send_base + start, end - start)
        self._send_names[j * NAME : j * NAME + size] = name
        if self.pktinfo:
            send = self._send
            send.controls.area[j * CONTROL : j * CONTROL + len(control)] = control
            send.h64[j * (_HDR // 8) + self._controllen] = len(control)
        self._queued = j + 1
        self._used = end
        return True

    def flush(self) -> bool:
        """Send every queued answer; False when the socket's buffer is full (the rest
        stays queued: call again once it is writable)."""
        address = self._send.address
        count = self._queued
        sent = self._sent
        for _ in range(count):  # bounded: each round sends or skips at least one
            if sent >= count:
                break
            done = self._sendmmsg(self.fd, address + sent * _HDR, count - sent, 0)
            if done > 0:
                sent += done
                continue
            err = ctypes.get_errno() if done < 0 else errno.EAGAIN
            if err in _RETRY_LATER:
                self._sent = sent
                return False
            sent += 1  # this one cannot be sent (e.g. its address went away): skip it
        self._queued = self._sent = self._used = 0
        return True
