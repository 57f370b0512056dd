// Steady warm traffic: a constant arrival rate against one app, with latency thresholds.
//   k6 run -e URL=http://127.0.0.1/ -e HOST=hello.example.com -e RATE=500 loadtest/k6/steady.js
import http from "k6/http";
import { check } from "k6";

const URL = __ENV.URL || "http://127.0.0.1/";
const HOST = __ENV.HOST || "hello.localhost";

export const options = {
  scenarios: {
    steady: {
      executor: "constant-arrival-rate",
      rate: Number(__ENV.RATE || 500),
      timeUnit: "1s",
      duration: __ENV.DURATION || "1m",
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.001"],
    http_req_duration: ["p(99)<50"],
  },
};

export default function () {
  const r = http.get(URL, { headers: { Host: HOST } });
  check(r, { "status 200": (res) => res.status === 200 });
}
