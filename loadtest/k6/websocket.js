// WebSockets through the edge: each VU holds a socket open for HOLD seconds, sending a message
// every second and expecting it echoed (the app must echo). Open sockets keep the app awake.
//   k6 run -e URL=ws://127.0.0.1/ws -e HOST=chat.example.com -e VUS=200 -e HOLD=120 loadtest/k6/websocket.js
import ws from "k6/ws";
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";

const URL = __ENV.URL || "ws://127.0.0.1/ws";
const HOST = __ENV.HOST || "hello.localhost";
const HOLD = Number(__ENV.HOLD || 120);
const echoed = new Counter("ws_echoed");
const rtt = new Trend("ws_echo_ms", true);

export const options = {
  scenarios: {
    sockets: { executor: "per-vu-iterations", vus: Number(__ENV.VUS || 100), iterations: 1, maxDuration: `${HOLD + 60}s` },
  },
  thresholds: {
    ws_connecting: ["p(95)<1000"],
    checks: ["rate>0.999"],
  },
};

export default function () {
  const res = ws.connect(URL, { headers: { Host: HOST } }, (socket) => {
    let sent = 0;
    socket.on("open", () => {
      socket.setInterval(() => {
        sent = Date.now();
        socket.send(`ping ${sent}`);
      }, 1000);
      socket.setTimeout(() => socket.close(), HOLD * 1000);
    });
    socket.on("message", (msg) => {
      if (msg.startsWith("ping ")) {
        echoed.add(1);
        rtt.add(Date.now() - Number(msg.slice(5)));
      }
    });
  });
  check(res, { "upgraded (101)": (r) => r && r.status === 101 });
}
