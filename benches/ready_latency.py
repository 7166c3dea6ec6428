#!/usr/bin/env python3
"""How soon after an instance's port opens does aikore report it `started`?

Starts a release aikore on a temp data dir with a custom blueprint whose app
binds its port, prints the wall-clock time of that moment, then serves HTTP.
Each round starts the instance, waits for the `started` event on
/api/v1/events (SSE), and takes (event received) - (port opened). Both clocks
are this machine's, so the difference is the supervisor's detection delay
plus one SSE hop. Prints median and p99 over the rounds.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROUNDS = int(os.environ.get("ROUNDS", "40"))
BIN = os.environ.get("AIKORE_BIN", "target/release/aikore")

APP = r'''
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(64)
print("OPEN", time.time_ns(), flush=True)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    finally:
        c.close()
'''

BLUEPRINT = """#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Bench ready
# aikore.category = Testing
### AIKORE-METADATA-END ###
exec python3 "$AIKORE_DATA_DIR/app.py" "$WEBUI_PORT"
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# The API sits behind aikore's login: the daemon accepts this bearer token.
TOKEN = f"bench-{os.getpid()}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body) if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **AUTH})
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    return resp.status, json.loads(text) if text else None


def main():
    tmp = tempfile.mkdtemp(prefix="aikore-ready-")
    data = os.path.join(tmp, "data")
    os.makedirs(os.path.join(data, "blueprints"))
    with open(os.path.join(data, "app.py"), "w") as f:
        f.write(APP)
    with open(os.path.join(data, "blueprints", "bench-ready.sh"), "w") as f:
        f.write(BLUEPRINT)
    api_port = free_port()
    env = dict(os.environ, AIKORE_LOG="warn", AIKORE_PORT=str(free_port()), AIKORE_API_TOKEN=TOKEN)
    daemon = subprocess.Popen(
        [BIN, "serve", "--data-dir", data, "--units-dir", os.path.join(tmp, "none"),
         "--listen", f"127.0.0.1:{api_port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            try:
                if api(api_port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.01)
        status, body = api(api_port, "POST", "/api/v1/instances", {"name": "ready", "blueprint": "bench-ready"})
        assert status == 201, body

        started_at = {}
        cond = threading.Condition()

        def follow():
            conn = http.client.HTTPConnection("127.0.0.1", api_port)
            conn.request("GET", "/api/v1/events", headers=AUTH)
            resp = conn.getresponse()
            event = None
            while True:
                line = resp.fp.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "state":
                    msg = json.loads(line[5:])
                    if msg["unit"] == "ready" and msg["status"] == "started":
                        with cond:
                            started_at[msg["pid"]] = time.time_ns()
                            cond.notify_all()

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.2)
        log = os.path.join(data, "logs", "ready.log")
        samples = []
        for _ in range(ROUNDS):
            api(api_port, "POST", "/api/v1/instances/ready/start")
            with cond:
                ok = cond.wait_for(lambda: len(started_at) > len(samples), timeout=30)
            assert ok, "no started event"
            opened = [int(l.split()[1]) for l in open(log) if l.startswith("OPEN ")][-1]
            got = max(started_at.values())
            samples.append((got - opened) / 1e6)
            api(api_port, "POST", "/api/v1/instances/ready/stop")
            for _ in range(1000):
                if api(api_port, "GET", "/api/v1/instances/ready")[1]["status"] == "stopped":
                    break
                time.sleep(0.01)
        samples.sort()
        median = samples[len(samples) // 2]
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        print(f"port open -> started, {len(samples)} rounds: median {median:.1f} ms, p99 {p99:.1f} ms, "
              f"min {samples[0]:.1f} ms, max {samples[-1]:.1f} ms")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
