#!/usr/bin/env python3
"""Wait until N services run, and say when.

  start-wait.py FILE N TIMEOUT_S

Polls every 2 ms until FILE has N bytes (each service appends one byte when
it runs: ready-pause.c), then prints the wall-clock time (epoch seconds) of
that moment. Started before the supervisor, so its own start-up is not
counted. Exit 1 on timeout.
"""
import os
import sys
import time


def main():
    path, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if os.stat(path).st_size >= n:
                print(f"{time.time():.6f}")
                return 0
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return 1


if __name__ == "__main__":
    sys.exit(main())
