#!/usr/bin/env python3
"""Wait until a log capture has the end marker, and say how long it took.

  logwait.py START_FILE TIMEOUT_S MARKER FILE...

START_FILE holds the producer's start time (`date +%s.%N`, written just before
it exec's cat). Polls every 5 ms until MARKER appears in the last 64 KiB of
one of FILE... (a rotating capture may have just moved it to FILE.1), then
prints the seconds from the producer's start to that moment. Exit 1 on timeout.
"""
import os
import sys
import time


def tail_has(path, marker):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            return marker in f.read()
    except OSError:
        return False


def main():
    start_file, timeout, marker, files = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode(), sys.argv[4:]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(tail_has(p, marker) for p in files):
            seen = time.time()
            with open(start_file) as f:
                start = float(f.read().strip())
            print(f"{seen - start:.3f}")
            return 0
        time.sleep(0.005)
    return 1


if __name__ == "__main__":
    sys.exit(main())
