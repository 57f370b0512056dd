#!/usr/bin/env python3
"""Memory per idle keep-alive connection of a server (used by loadtest/prod.sh).

usage: idle_conns.py HTTP_PORT HTTPS_PORT PLAIN_HOST TLS_HOST N SETTLE PID [PID...]

Four phases, cumulative (the connections of a phase stay open through the later ones, so a
phase's connections cannot reuse memory that an earlier phase's connections still hold):
  plain  N connections over plain TCP, each with one HTTP/1.1 `GET /` (Host: PLAIN_HOST)
         answered, then idle
  tls    N connections over TLS (SNI and Host TLS_HOST, ALPN http/1.1), one `GET /` each, then idle
  h2     N connections over TLS with ALPN h2: the preface, SETTINGS, one GET on stream 1 read to
         its end (the server's SETTINGS acknowledged), then idle
  plain+ N more plain connections as in `plain`, once all the others are idle: what holding
         idle plain connections costs a server that has some already. A server that gives an
         idle connection's memory back to its allocator (SpinForge parks them: the task and its
         buffers go) shows it here, where the first phase saw the peak of N connections being
         answered at once; for one that does not, the two phases agree.
Before and SETTLE seconds after each phase, the memory of the PIDs and of their children
(NGINX's workers) is summed, as RSS and as PSS (proportional set size: a page shared by k of
the processes counts 1/k in each; unlike RSS, it grows when a forked worker writes to a page it
shared with its master). Prints one line per phase:
  PHASE RSS_BEFORE_KB RSS_AFTER_KB RSS_BYTES_PER_CONN PSS_BEFORE_KB PSS_AFTER_KB PSS_BYTES_PER_CONN
and at the end `alive A of T`: the connections still open (not closed by the server) when the
last measurement was taken. Exits 1 if an answer was not a 200, or h2 was not negotiated.
"""
import os
import socket
import ssl
import sys
import time


def memory_kb(pids):
    """(RSS, PSS) in kB of the processes and of their children."""
    want = set(pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in pids:
            want.add(int(entry))
    rss = pss = 0
    for pid in want:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def read_h1_response(s):
    """Reads one HTTP/1.1 answer with a Content-Length; returns the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("answer without Content-Length: " + lines[0].decode(errors="replace"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the answer's body")
        body += chunk
    return status


def frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def h2_request(s, host):
    """Preface, SETTINGS, GET / on stream 1; reads frames until stream 1 ends. Returns the
    status (200 when the header block starts with the static table's `:status: 200`)."""
    # HPACK: :method GET (2), :scheme https (7), :path / (4), :authority literal (name index 1).
    block = bytes([0x82, 0x87, 0x84, 0x01, len(host)]) + host.encode()
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    buf = b""
    status = None
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the h2 answer ended")
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9:9 + n], buf[9 + n:]
        if ftype == 4 and not flags & 0x1:  # SETTINGS: acknowledge
            s.sendall(frame(4, 0x1, 0))
        elif ftype == 7:  # GOAWAY
            raise ConnectionError("GOAWAY before the answer")
        elif ftype == 1 and stream == 1:  # HEADERS
            p = payload
            if flags & 0x8:  # PADDED
                p = p[1:len(p) - p[0]]
            if flags & 0x20:  # PRIORITY
                p = p[5:]
            if status is None:
                status = 200 if p[:1] == b"\x88" else -1
            if flags & 0x1:
                return status
        elif ftype == 0 and stream == 1 and flags & 0x1:  # DATA with END_STREAM
            return status
        elif ftype == 3 and stream == 1:  # RST_STREAM
            raise ConnectionError("stream reset")


def open_conn(mode, port, host):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "plain":
        raw.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = read_h1_response(raw)
        s = raw
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
        s = ctx.wrap_socket(raw, server_hostname=host)
        if mode == "h2":
            if s.selected_alpn_protocol() != "h2":
                raise ValueError(f"ALPN gave {s.selected_alpn_protocol()!r}, not h2")
            status = h2_request(s, host)
        else:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = read_h1_response(s)
    if status != 200:
        raise ValueError(f"{mode}: status {status}, not 200")
    s.setblocking(False)
    return s


def alive(mode, s):
    """Still open: nothing to read (h2: or only frames that are not GOAWAY)."""
    try:
        data = s.recv(65536)  # the socket is non-blocking
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except OSError:
        return False
    if not data or mode != "h2":
        return False
    return b"\x07\x00\x00\x00\x00\x00" not in data  # a GOAWAY frame header on stream 0 (rough)


def main():
    http_port, https_port, plain_host, tls_host, n, settle = (
        int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]),
        float(sys.argv[6]))
    pids = {int(p) for p in sys.argv[7:]}
    held = []
    for phase, mode, port, host in (("plain", "plain", http_port, plain_host),
                                    ("tls", "tls", https_port, tls_host),
                                    ("h2", "h2", https_port, tls_host),
                                    ("plain+", "plain", http_port, plain_host)):
        before = memory_kb(pids)
        for i in range(n):
            try:
                held.append((mode, open_conn(mode, port, host)))
            except Exception as e:  # noqa: BLE001 - report which connection failed, and how
                print(f"{mode}: connection {i + 1} of {n} failed: {e}", file=sys.stderr)
                sys.exit(1)
        time.sleep(settle)
        after = memory_kb(pids)
        print(phase, " ".join(f"{before[i]} {after[i]} {(after[i] - before[i]) * 1024 / n:.0f}"
                             for i in (0, 1)), flush=True)
    print(f"alive {sum(alive(m, s) for m, s in held)} of {len(held)}", flush=True)
    for _, s in held:
        s.close()


if __name__ == "__main__":
    main()
