// Cold starts: the app must be stopped before each iteration (a short idle_timeout, e.g. 5s, and
// IDLE_WAIT above it). Each iteration sends CONCURRENCY requests at once to the stopped app; all
// are held for one start. Reports the Server-Timing cold-start duration as a trend.
//   k6 run -e URL=http://127.0.0.1/ -e HOST=hello.example.com -e IDLE_WAIT=8 loadtest/k6/coldstart.js
import http from "k6/http";
import { check, sleep } from "k6";
import { Trend } from "k6/metrics";

const URL = __ENV.URL || "http://127.0.0.1/";
const HOST = __ENV.HOST || "hello.localhost";
const CONCURRENCY = Number(__ENV.CONCURRENCY || 20);
const coldStart = new Trend("cold_start_ms", true);

export const options = {
  scenarios: {
    cold: { executor: "per-vu-iterations", vus: 1, iterations: Number(__ENV.ROUNDS || 5), maxDuration: "10m" },
  },
  thresholds: {
    http_req_failed: ["rate==0"],
    cold_start_ms: ["p(50)<2000"],
  },
};

export default function () {
  sleep(Number(__ENV.IDLE_WAIT || 8)); // let the app idle out
  const reqs = Array.from({ length: CONCURRENCY }, () => ["GET", URL, null, { headers: { Host: HOST } }]);
  for (const r of http.batch(reqs)) {
    check(r, { "status 200": (res) => res.status === 200 });
    const t = /cold-start;dur=(\d+)/.exec(r.headers["Server-Timing"] || "");
    if (t) coldStart.add(Number(t[1]));
  }
}
