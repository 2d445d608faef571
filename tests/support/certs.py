"""Real certificates for the TLS tests, made with the openssl command line.

One session-scoped fixture (`pki`) builds, in a temporary directory:

- a CA and a server certificate with SANs 127.0.0.1 and localhost;
- client certificates whose common names the ACL tests use;
- an expired server certificate, a server certificate without the SANs the
  tests dial, and a second CA with a server and a client certificate of its
  own (the "wrong CA");
- certificates for cluster nodes (peers) and for etcd.

EC P-256 keys: quick to make, and every client under test accepts them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The common names the ACL tests give their clients.
CLIENT_NAMES = ("client", "worker", "manager", "admin", "nobody")


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server: Cert
    clients: dict[str, Cert]
    expired: Cert
    no_san: Cert
    other_ca: Path
    other_server: Cert
    other_client: Cert
    other_peer: Cert
    peer: Cert
    etcd_server: Cert
    etcd_client: Cert

    def client(self, name: str) -> Cert:
        return self.clients[name]


def _run(args: list[str], cwd: Path) -> None:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr}")


def _key_args() -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _run(["openssl", "req", "-x509", *_key_args(), "-keyout", str(key), "-out", str(cert),
          "-days", "30", "-subj", f"/CN={name}",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    return cert, key


def _ext(d: Path, name: str, san: str | None, usage: str) -> Path:
    lines = [f"extendedKeyUsage={usage}", "basicConstraints=CA:FALSE"]
    if san:
        lines.append(f"subjectAltName={san}")
    path = d / f"{name}.ext"
    path.write_text("\n".join(lines) + "\n")
    return path


def _csr(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, csr = d / f"{name}.key", d / f"{name}.csr"
    _run(["openssl", "req", "-new", *_key_args(), "-keyout", str(key), "-out", str(csr),
          "-subj", f"/CN={cn}"], d)
    return key, csr


def make_cert(d: Path, ca: tuple[Path, Path], name: str, cn: str, *, san: str | None,
              usage: str = "serverAuth,clientAuth") -> Cert:
    key, csr = _csr(d, name, cn)
    cert = d / f"{name}.pem"
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
          "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(_ext(d, name, san, usage)),
          "-out", str(cert)], d)
    return Cert(cert, key)


def make_expired(d: Path, ca: tuple[Path, Path], name: str, san: str) -> Cert:
    # `openssl x509 -req` (OpenSSL 3.0) cannot backdate; `openssl ca` can.
    key, csr = _csr(d, name, name)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    conf = d / "ca.cnf"
    conf.write_text("[ca]\ndefault_ca=ca_default\n[ca_default]\ndatabase=index.txt\n"
                    "new_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=any\n"
                    "[any]\ncommonName=supplied\n")
    cert = d / f"{name}.pem"
    _run(["openssl", "ca", "-batch", "-config", str(conf), "-cert", str(ca[0]), "-keyfile",
          str(ca[1]), "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
          "-notext", "-extfile", str(_ext(d, name, san, "serverAuth,clientAuth")),
          "-in", str(csr), "-out", str(cert)], d)
    return Cert(cert, key)


LOCAL_SAN = "IP:127.0.0.1,DNS:localhost"


def make_pki(d: Path) -> Pki:
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    return Pki(
        dir=d,
        ca=ca[0],
        server=make_cert(d, ca, "server", "gearmesh-server", san=LOCAL_SAN),
        clients={n: make_cert(d, ca, f"client-{n}", n, san=None, usage="clientAuth")
                 for n in CLIENT_NAMES},
        expired=make_expired(d, ca, "expired", LOCAL_SAN),
        no_san=make_cert(d, ca, "no-san", "gearmesh-server", san="DNS:elsewhere.example"),
        other_ca=other[0],
        other_server=make_cert(d, other, "other-server", "gearmesh-server", san=LOCAL_SAN),
        other_client=make_cert(d, other, "other-client", "client", san=None,
                               usage="clientAuth"),
        other_peer=make_cert(d, other, "other-peer", "gearmesh-peer", san=LOCAL_SAN),
        peer=make_cert(d, ca, "peer", "gearmesh-peer", san=LOCAL_SAN),
        etcd_server=make_cert(d, ca, "etcd-server", "etcd", san=LOCAL_SAN),
        etcd_client=make_cert(d, ca, "etcd-client", "gearmesh", san=None, usage="clientAuth"),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))
