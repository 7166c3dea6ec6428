#!/usr/bin/env python3
"""Looks at a persistent-mode display from inside the image (tests/container/run.sh).

  vnc-probe.py ws PORT            websockify on PORT upgrades a WebSocket and
                                  relays the VNC server's RFB greeting
  vnc-probe.py screen PORT RRGGBB the VNC server on PORT shows a screen that is
                                  at least half that colour (Firefox drew the page)

Standard library only: the image has python3 and nothing else to speak RFB.
Exit status 0 when the check holds; the reason is printed either way.
"""

import socket
import struct
import sys


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def ws_check(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += recv_exact(s, 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            print("websockify answered", status.decode(errors="replace"))
            return 1
        b0, b1 = recv_exact(s, 2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack(">H", recv_exact(s, 2))[0]
        payload = recv_exact(s, length)
        print(f"websocket frame opcode {b0 & 0x0F}: {payload!r}")
        return 0 if payload.startswith(b"RFB 003.") else 1


def screen_check(port, colour):
    want = tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        version = recv_exact(s, 12)
        s.sendall(b"RFB 003.008\n")
        types = recv_exact(s, recv_exact(s, 1)[0])
        if 1 not in types:
            print("no 'None' security type offered:", list(types))
            return 1
        s.sendall(b"\x01")
        if struct.unpack(">I", recv_exact(s, 4))[0] != 0:
            print("security handshake refused")
            return 1
        s.sendall(b"\x01")  # ClientInit: shared
        w, h = struct.unpack(">HH", recv_exact(s, 4))
        bpp, _depth, big, _true, rmax, gmax, bmax, rsh, gsh, bsh = struct.unpack(">BBBBHHHBBB3x", recv_exact(s, 16))
        recv_exact(s, struct.unpack(">I", recv_exact(s, 4))[0])  # desktop name
        s.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only
        s.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))  # the whole screen
        order = "big" if big else "little"
        size = bpp // 8
        total = match = 0
        while True:
            kind = recv_exact(s, 1)[0]
            if kind != 0:
                print("unexpected server message", kind)
                return 1
            (rects,) = struct.unpack(">xH", recv_exact(s, 3))
            for _ in range(rects):
                _x, _y, rw, rh, enc = struct.unpack(">HHHHi", recv_exact(s, 12))
                if enc != 0:
                    print("unexpected encoding", enc)
                    return 1
                data = recv_exact(s, rw * rh * size)
                for i in range(0, len(data), size):
                    v = int.from_bytes(data[i : i + size], order)
                    px = ((v >> rsh) & rmax) * 255 // rmax, ((v >> gsh) & gmax) * 255 // gmax, ((v >> bsh) & bmax) * 255 // bmax
                    match += all(abs(a - b) <= 8 for a, b in zip(px, want))
                total += rw * rh
            if total >= w * h:
                break
    share = match / max(total, 1)
    print(f"{version.strip().decode()} {w}x{h} {bpp}bpp: {share:.0%} of the screen is #{colour}")
    return 0 if share >= 0.5 else 1


def main(argv):
    if len(argv) == 3 and argv[1] == "ws":
        return ws_check(int(argv[2]))
    if len(argv) == 4 and argv[1] == "screen":
        return screen_check(int(argv[2]), argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, EOFError) as e:
        print("error:", e)
        sys.exit(1)
