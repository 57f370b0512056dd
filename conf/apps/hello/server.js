// SpinForge's demo app. SpinForge gives every spinlet PORT and HOST to listen on.
const express = require("express");

const app = express();
const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
const bootedAt = new Date().toISOString();

app.get("/", (req, res) => {
  res.type("text/plain").send(
    `Hello from SpinForge!\n` +
      `host: ${req.get("x-forwarded-host") || req.hostname}\n` +
      `pid: ${process.pid}, up since ${bootedAt}\n` +
      `request id: ${req.get("x-request-id") || "-"}\n`
  );
});

app.get("/healthz", (_req, res) => res.json({ ok: true }));

const server = app.listen(port, host, () => {
  console.log(`hello listening on http://${host}:${port}`);
});

// Finish in-flight requests on SIGTERM instead of dropping them.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
