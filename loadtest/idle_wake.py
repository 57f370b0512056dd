#!/usr/bin/env python3
"""What a request costs after its keep-alive connection sat idle (used to measure the edge's
parking of idle plain connections, edge/src/park.rs, against a short idle that does not park).

usage: idle_wake.py PORT HOST N IDLE_SECONDS [IDLE_SECONDS...]

Opens N plain HTTP/1.1 connections to 127.0.0.1:PORT, one `GET /` (Host: HOST) answered on
each. Then for each IDLE_SECONDS: waits that long, then on one connection after the other
sends `GET /` and times the answer from the write to its last byte. Prints per
idle time the median, p90 and p99 in microseconds, and the slowest.
"""
import socket
import sys
import time


def get(s, host):
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())


def answer_len(buf):
    """Bytes of the first whole answer in buf, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    total = end + 4 + length
    return total if len(buf) >= total else None


def main():
    port, host, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    idles = [float(x) for x in sys.argv[4:]]
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        get(s, host)
        buf = b""
        while answer_len(buf) is None:
            buf += s.recv(65536)
        conns.append(s)
    for idle in idles:
        time.sleep(idle)
        took = []
        for s in conns:
            start = time.perf_counter()
            get(s, host)
            buf = b""
            while answer_len(buf) is None:
                chunk = s.recv(65536)
                if not chunk:
                    sys.exit("the server closed a connection")
                buf += chunk
            took.append((time.perf_counter() - start) * 1e6)
        took.sort()
        q = lambda p: took[min(len(took) - 1, int(p * len(took)))]
        print(f"idle {idle:.2f} s: {n} answers, median {q(0.5):.0f} us, p90 {q(0.9):.0f} us, "
              f"p99 {q(0.99):.0f} us, max {took[-1]:.0f} us", flush=True)


if __name__ == "__main__":
    main()
