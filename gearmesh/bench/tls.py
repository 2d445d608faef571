"""TLS for the load generator's connections (``--tls-ca``, ``--tls-cert``,
``--tls-key``): the options travel with each Server to the child processes
(an SSLContext cannot be pickled) and each process builds its context once.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientTLS:
    ca: str
    cert: str | None = None
    key: str | None = None


@functools.cache
def context(tls: ClientTLS) -> ssl.SSLContext:
    """Checks the server's chain against ``ca`` but not its name (the bench
    dials whatever address it is given, IPs included)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=tls.ca)
    ctx.check_hostname = False
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx
