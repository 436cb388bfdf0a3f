// Node.js cluster hello-world server for bench/http.py: the baseline pycluster is
// measured against. Usage: node http_server.js --port N [--workers 2]
// The scheduling policy comes from NODE_CLUSTER_SCHED_POLICY (rr | none), which Node's
// cluster module reads itself when the first worker is forked.
// BENCH_COUNT_DIR: each worker writes <dir>/node-w<id>.json with its request count when
// it receives SIGTERM, so the worker shares cost nothing while wrk is running.
'use strict';

const cluster = require('node:cluster');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(option('--port', '8000'));
const nWorkers = Number(option('--workers', '2'));
const countDir = process.env.BENCH_COUNT_DIR || '';
const BODY = Buffer.from('hello world\n');

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on('listening', () => {
    listening += 1;
    // bench/http.py waits for this line: every worker is accepting, so the first
    // measured second is not skewed towards the worker that happened to start first.
    if (listening === nWorkers) console.log('BENCH-READY primary');
  });
  for (let i = 0; i < nWorkers; i++) cluster.fork();
  // The benchmark signals the whole process group, so the workers get their own
  // SIGTERM; the primary only has to leave without waiting for them.
  process.on('SIGTERM', () => process.exit(0));
} else {
  let served = 0;
  let fresh = 0; // requests for /fresh: bench/http.py's fresh-connection split
  const server = http.createServer((req, res) => {
    served += 1;
    if (req.url === '/fresh') fresh += 1;
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': BODY.length });
    res.end(BODY);
  });
  server.listen(port, '127.0.0.1');
  const dump = () => {
    if (countDir) {
      const file = path.join(countDir, `node-w${cluster.worker.id}.json`);
      fs.writeFileSync(file, JSON.stringify({ worker: `node-w${cluster.worker.id}`, pid: process.pid, requests: served, fresh }));
    }
  };
  process.on('SIGTERM', () => {
    dump();
    process.exit(0);
  });
  // A worker whose primary went away is disconnected: leave as well, counts included.
  cluster.worker.on('disconnect', () => {
    dump();
    process.exit(0);
  });
}
