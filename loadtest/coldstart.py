#!/usr/bin/env python3
"""Cold-start timing for the walking-skeleton report.

  coldstart.py node APP_DIR PORT        time from `node server.js` to its first HTTP answer
  coldstart.py edge HOST EDGE_ADDR      time of one request through the edge to a stopped app

Prints milliseconds (and, for the edge, the Server-Timing it reported).
"""
import http.client, os, socket, subprocess, sys, time


def first_answer_ms(port, path="/", deadline_s=30):
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status < 500:
                return (time.perf_counter() - start) * 1000
        except OSError:
            time.sleep(0.002)
    raise SystemExit(f"no answer on {port}")


def node(app_dir, port):
    env = {"PATH": os.environ["PATH"], "PORT": port, "HOST": "127.0.0.1", "NODE_ENV": "production"}
    t0 = time.perf_counter()
    p = subprocess.Popen(["node", "server.js"], cwd=app_dir, env=env, stdout=subprocess.DEVNULL)
    try:
        first_answer_ms(int(port))
        print(f"{(time.perf_counter() - t0) * 1000:.1f}")
    finally:
        p.terminate()
        p.wait()


def edge(host, addr):
    h, p = addr.rsplit(":", 1)
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(h, int(p), timeout=60)
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    r.read()
    ms = (time.perf_counter() - t0) * 1000
    print(f"{ms:.1f} status={r.status} server-timing={r.getheader('server-timing')}")


if __name__ == "__main__":
    {"node": node, "edge": edge}[sys.argv[1]](*sys.argv[2:])
