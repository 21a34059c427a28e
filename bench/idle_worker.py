"""CPU an idle worker uses: ``python bench/idle_worker.py STORE_URL [--seconds 30]``.

Starts ``cio-webhooks worker --store STORE_URL`` (migrating the store first), lets it
settle for 5 s, then reads its user + system CPU time from ``/proc`` over ``--seconds``
with no events arriving, and prints it as a share of one core.  On PostgreSQL an idle
worker waits on LISTEN and looks for due retries every 2 s; its warehouse loader backs
off to one look a second.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "cio-webhooks"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    subprocess.run([str(BIN), "migrate", "--store", args.store], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as data:
        worker = subprocess.Popen(
            [str(BIN), "worker", "--store", args.store, "--data-dir", data, "--create"],
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(5)
            before = cpu_seconds(worker.pid)
            time.sleep(args.seconds)
            used = cpu_seconds(worker.pid) - before
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    share = 100 * used / args.seconds
    print(f"idle worker: {used:.2f} s CPU in {args.seconds:g} s = {share:.2f}% of one core")


if __name__ == "__main__":
    main()
