"""``python -m tests.servers [KIND...]``: start the servers (all three by default), print the
TASKWIRE_TEST_*_URL export lines, and stop them on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.servers.pool import KINDS, ServerPool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description=__doc__)
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"any of {', '.join(KINDS)}")
    parser.add_argument("--run-dir", type=Path, help="keep data here (default: a temp dir)")
    args = parser.parse_args(argv)
    kinds: list[str] = args.kinds or list(KINDS)
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"unknown server kind: {', '.join(unknown)}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    pool = ServerPool(args.run_dir)
    try:
        pool.start_shared(kinds)
        for kind in kinds:
            server = pool.shared(kind)
            print(f"export TASKWIRE_TEST_{kind.upper()}_URL={server.url}", flush=True)
            up = f"pid {server.pid}, up in {server.start_seconds:.2f} s"
            print(f"# {kind}: {up}, log {server.log_path}", file=sys.stderr)
        print("# Ctrl-C or SIGTERM stops the servers", file=sys.stderr)
        while not stop.wait(1.0):
            pass
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
