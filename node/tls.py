"""TLS material for the Gearman port: files checked, SSLContext built.

Everything is loaded at start-up, before privileges are dropped, and any
problem is a :class:`TLSError` with one line naming the file, so the node
refuses to start instead of serving plaintext (gearmand built without TLS
silently does that when given ``--ssl``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# gearmand reads these when --ssl is given, and they win over its flags.
GEARMAND_ENV = {"ssl_ca_file": "GEARMAND_CA_CERTIFICATE",
                "ssl_certificate": "GEARMAND_SERVER_PEM",
                "ssl_key": "GEARMAND_SERVER_KEY"}


class TLSError(Exception):
    pass


@dataclass(frozen=True)
class TLSFiles:
    ca: str | None
    cert: str | None
    key: str | None


def check_readable(path: str | None, what: str, flag: str) -> str:
    if not path:
        raise TLSError(f"{what} missing: give {flag}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TLSError(f"cannot read {what} {path} ({flag}): {e.strerror}") from None
    return path


def gearmand_env_override(files: TLSFiles, env: Mapping[str, str] = os.environ) -> TLSFiles:
    """gearmand's environment variables replace the flags' files."""
    return TLSFiles(ca=env.get(GEARMAND_ENV["ssl_ca_file"]) or files.ca,
                    cert=env.get(GEARMAND_ENV["ssl_certificate"]) or files.cert,
                    key=env.get(GEARMAND_ENV["ssl_key"]) or files.key)


def load_chain(ctx: ssl.SSLContext, cert: str, key: str, cert_flag: str, key_flag: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise TLSError(f"certificate {cert} ({cert_flag}) and key {key} ({key_flag}) "
                       f"do not load: {e.reason or e}") from None


def load_ca(ctx: ssl.SSLContext, ca: str, flag: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise TLSError(f"CA file {ca} ({flag}) does not load: {e.reason or e}") from None


def server_context(files: TLSFiles, *, verify_client: bool, want_client_cert: bool,
                   flags: tuple[str, str, str] = ("--ssl-ca-file", "--ssl-certificate",
                                                  "--ssl-key")) -> ssl.SSLContext:
    """The Gearman port's context. TLS 1.2 and 1.3 (python gear offers only
    1.2). A client certificate is required with `verify_client`, asked for
    (but optional) with `want_client_cert` (an ACL needs names)."""
    ca_flag, cert_flag, key_flag = flags
    cert = check_readable(files.cert, "server certificate", cert_flag)
    key = check_readable(files.key, "server key", key_flag)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, cert, key, cert_flag, key_flag)
    if verify_client or want_client_cert:
        if not files.ca:
            need = "--ssl-verify-client" if verify_client else "--acl-file"
            raise TLSError(f"{need} needs {ca_flag} (the CA that signs client certificates)")
        load_ca(ctx, check_readable(files.ca, "CA file", ca_flag), ca_flag)
        ctx.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_OPTIONAL
    elif files.ca:
        check_readable(files.ca, "CA file", ca_flag)
    return ctx


def client_context(ca: str | None, cert: str | None = None, key: str | None = None, *,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """A client's context (bench, status, tests): verifies the server's chain."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = check_hostname and ca is not None
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def subject_cn(peercert: Any) -> str | None:
    """The common name of a verified peer certificate (gear's ssl_subject)."""
    if not peercert:
        return None
    cn: str | None = None
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v  # the last one, as gear takes it
    return cn
