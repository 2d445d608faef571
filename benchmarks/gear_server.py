#!/usr/bin/env python3
"""Python `gear`'s own Gearman server (gear.Server), on one loopback port,
for the benchmarks.

The package's `geard` console script cannot be used as is: it imports
python-daemon even with -d (not a dependency of gear, so not installed), and
with -d it logs at DEBUG level to stderr, which would slow it down and fill
the log. This starts the same gear.Server that geard starts, with what geard
passes by default (no TLS, no ACL, no TCP keepalive) and statsd disabled
(statsd_host=None, whatever STATSD_HOST says), bound to --host only, logging
warnings and errors only. gear.Server runs in its own threads; the main
thread waits until SIGTERM or SIGINT.

    python benchmarks/gear_server.py --port 4730 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import signal
import sys
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--port", type=int, required=True, help="port to listen on")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    import gear

    version = importlib.metadata.version("gear")

    server = gear.Server(port=args.port, host=args.host, statsd_host=None, keepalive=False)

    def stop(_sig: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"gear {version} server listening on "
          f"{args.host}:{server.port}", flush=True)
    try:
        while server.running:
            signal.pause()
    finally:
        server.running = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
