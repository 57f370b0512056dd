// A burst: from idle to many virtual users at once, held, then gone. Shows queueing and
// whether anything fails (held requests, rate limits: 429s are counted apart).
//   k6 run -e URL=http://127.0.0.1/ -e HOST=hello.example.com -e PEAK=500 loadtest/k6/burst.js
import http from "k6/http";
import { check } from "k6";
import { Counter } from "k6/metrics";

const URL = __ENV.URL || "http://127.0.0.1/";
const HOST = __ENV.HOST || "hello.localhost";
const limited = new Counter("rate_limited");

export const options = {
  scenarios: {
    burst: {
      executor: "ramping-vus",
      startVUs: 0,
      stages: [
        { duration: "2s", target: Number(__ENV.PEAK || 500) },
        { duration: "20s", target: Number(__ENV.PEAK || 500) },
        { duration: "2s", target: 0 },
      ],
    },
  },
  thresholds: {
    "http_req_failed{expected_response:true}": ["rate<0.001"],
  },
};

export default function () {
  const r = http.get(URL, {
    headers: { Host: HOST },
    responseCallback: http.expectedStatuses(200, 429),
  });
  if (r.status === 429) limited.add(1);
  check(r, { "200 or 429": (res) => res.status === 200 || res.status === 429 });
}
