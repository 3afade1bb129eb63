// Peer harness: express + express-idempotency (default in-memory adapter)
// wrapping a handler equivalent to bench/upstream (POST /payments, ~100-byte JSON).
// Usage: PORT=9101 DELAY_MS=0 node server.js   (delay also via ?delay_ms=N)
//        NO_IDEM=1 -> same handler without the middleware (express's own ceiling)
'use strict';
const express = require('express');
const { idempotency, getSharedIdempotencyService } = require('express-idempotency');

const port = Number(process.env.PORT || 9101);
const defaultDelay = Number(process.env.DELAY_MS || 0);
let executions = 0;

const app = express();
app.disable('x-powered-by');
app.disable('etag');
app.use(express.json({ limit: '1mb' }));   // the 256 KiB workload (express's default limit is 100 kB)

app.get('/stats', (req, res) => res.json({ executions }));
app.post('/reset', (req, res) => { executions = 0; res.status(204).end(); });

const noIdem = !!process.env.NO_IDEM;
const mw = noIdem ? (req, res, next) => next() : idempotency();
app.post('/payments', mw, async (req, res) => {
  // express-idempotency calls next() even after replaying; the handler must check isHit.
  if (!noIdem && getSharedIdempotencyService().isHit(req)) return;
  const n = ++executions;
  const delay = req.query.delay_ms !== undefined ? Number(req.query.delay_ms) : defaultDelay;
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  const reqBytes = req.body ? JSON.stringify(req.body).length : 0;
  res.status(200).type('application/json').send(
    `{"id":"pay_${String(n).padStart(10, '0')}","status":"succeeded","amount":1999,"currency":"usd","execution":${n},"req_bytes":${reqBytes}}`
  );
});

app.listen(port, '127.0.0.1', () => console.error(`node peer listening on 127.0.0.1:${port}`));
