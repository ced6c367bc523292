"""Network guard for tests, loaded into every Python process started with this folder on PYTHONPATH.

Any connection or name lookup that leaves the machine is refused and recorded (one line per attempt, with the
process and the calling module) in the file named by $PLANTLIB_NETGUARD_LOG; loopback and Unix sockets pass.
Kernels and torchrun workers inherit PYTHONPATH, so they are guarded too.
"""

import ipaddress
import os
import socket
import traceback

LOG = os.environ.get("PLANTLIB_NETGUARD_LOG")
LOCAL_NAMES = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::", b"localhost", b"127.0.0.1"}


def _record(kind, target):
    caller = next(
        (f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-2]) if "socket" not in f.filename),
        "?",
    )
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"pid {os.getpid()} {kind} {target!r} from {caller}\n")
    raise OSError(f"network guard: {kind} {target!r} refused (tests allow loopback only)")


def _is_numeric(host):
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host)
    except ValueError:
        return False
    return True


def _is_loopback(address):
    if not isinstance(address, tuple):
        return True  # AF_UNIX path or abstract name
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    return host in LOCAL_NAMES or host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")


if LOG:
    _getaddrinfo, _gethostbyname, _gethostbyname_ex = socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex
    _connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_NAMES and not _is_numeric(host):  # a numeric address needs no lookup: connect decides
            _record("name lookup", host)
        return _getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        if host not in LOCAL_NAMES and not _is_numeric(host):
            _record("name lookup", host)
        return _gethostbyname(host)

    def gethostbyname_ex(host):
        if host not in LOCAL_NAMES and not _is_numeric(host):
            _record("name lookup", host)
        return _gethostbyname_ex(host)

    def connect(self, address):
        if not _is_loopback(address):
            _record("connect", address)
        return _connect(self, address)

    def connect_ex(self, address):
        if not _is_loopback(address):
            _record("connect", address)
        return _connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if not _is_loopback(address):
            _record("sendto", address)
        return _sendto(self, data, *args)

    socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = getaddrinfo, gethostbyname, gethostbyname_ex
    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
