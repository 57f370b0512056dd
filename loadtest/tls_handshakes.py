#!/usr/bin/env python3
"""TLS handshakes per second against one server, with SNI (openssl s_time sends none).

usage: tls_handshakes.py PORT SNI SECONDS MODE PROCS
  MODE: full13 (TLS 1.3, new session each time), full12, resumed12 (TLS 1.2, resuming the
  first session: session id or ticket, whichever the server offers), resumed13 (TLS 1.3, a PSK
  from the session ticket of the first handshake, reused for every connection: the client
  waits up to 50 ms for the ticket once, and again only after a handshake that did not resume).
Prints the total handshakes per second over PROCS client processes. Certificates are not
verified (the same self-signed one is served by both servers compared).
"""
import multiprocessing as mp
import select
import socket
import ssl
import sys
import time


def fresh_ticket(s, wait=0.05):
    """The session with the ticket a TLS 1.3 server sends after the handshake (None if none
    came within `wait` seconds)."""
    end = time.monotonic() + wait
    s.setblocking(False)
    while True:
        sess = s.session
        if sess is not None and sess.has_ticket:
            return sess
        left = end - time.monotonic()
        if left <= 0 or not (s.pending() or select.select([s], [], [], left)[0]):
            return None
        try:
            s.recv(1)
        except ssl.SSLWantReadError:
            continue
        except OSError:
            return None


def worker(port, sni, seconds, mode, out):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if mode in ("full13", "resumed13") else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    session, n, resumed = None, 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
                n += 1
                if mode == "resumed12":
                    if s.session_reused:
                        resumed += 1
                    else:
                        session = s.session
                elif mode == "resumed13":
                    if s.session_reused:
                        resumed += 1
                    else:
                        session = fresh_ticket(s) or session
    out.put((n, resumed))


def main():
    port, sni, seconds, mode, procs = (
        int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    q = mp.Queue()
    ps = [mp.Process(target=worker, args=(port, sni, seconds, mode, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    results = [q.get() for _ in ps]
    for p in ps:
        p.join()
    total = sum(r[0] for r in results)
    resumed = sum(r[1] for r in results)
    if mode.startswith("resumed") and resumed < total * 0.9:
        print(f"only {resumed} of {total} handshakes resumed", file=sys.stderr)
        sys.exit(1)
    print(int(total / seconds))


if __name__ == "__main__":
    main()
