'use strict';
// Node.js side of bench/ipc.py: the reference that pycluster is measured against.
//
// One file plays both roles, as a Node cluster program usually does: the primary runs
// the measurement named on the command line and writes its numbers as JSON to --out;
// every worker just echoes each message back to the primary.
//
//   node bench/node/ipc.js --task rtt  --out FILE [--rounds 3] [--seconds 1]
//   node bench/node/ipc.js --task fork --out FILE [--counts 2,8] [--reps 5]
//   ... [--serialization json|advanced]
//
// Serialization is Node's default, JSON, unless --serialization says "advanced" (the V8
// serializer): each of pycluster's serializations is compared with Node's namesake.

const cluster = require('node:cluster');
const fs = require('node:fs');
const { execFileSync } = require('node:child_process');
const { performance } = require('node:perf_hooks');

const ONLINE_TIMEOUT_MS = 30000;

function parseArgs(argv) {
  const opts = {
    task: 'rtt',
    out: null,
    rounds: 3,
    seconds: 1,
    counts: [2, 8],
    reps: 5,
    settle: 0.5,
    payloadBytes: 1 << 20,
    primaryCpu: null,
    serialization: 'json',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value for ${key}`);
    switch (key) {
      case '--task': opts.task = value; break;
      case '--out': opts.out = value; break;
      case '--rounds': opts.rounds = Number(value); break;
      case '--seconds': opts.seconds = Number(value); break;
      case '--counts': opts.counts = value.split(',').map(Number); break;
      case '--reps': opts.reps = Number(value); break;
      case '--settle': opts.settle = Number(value); break;
      case '--payload-bytes': opts.payloadBytes = Number(value); break;
      case '--primary-cpu': opts.primaryCpu = Number(value); break;
      case '--serialization': opts.serialization = value; break;
      default: throw new Error(`unknown option ${key}`);
    }
  }
  if (!opts.out) throw new Error('--out is required');
  if (!['json', 'advanced'].includes(opts.serialization)) {
    throw new Error(`unknown serialization ${opts.serialization}`);
  }
  return opts;
}

function readRssBytes(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return match ? Number(match[1]) * 1024 : null;
}

// CPU time (user + system, in clock ticks) used so far by the processes `pids`; the
// Python side converts ticks to seconds, so every peer is measured the same way.
function cpuTicks(pids) {
  let total = 0;
  for (const pid of pids) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // utime and stime are the 12th and 13th fields after the command name.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    total += Number(fields[11]) + Number(fields[12]);
  }
  return total;
}

// The "split" runs: the job starts pinned to one CPU (so the worker stays there), and
// the primary moves every thread of its own to another once the worker is up. Node has
// no affinity API: util-linux's taskset does it (-a: all threads).
function moveToCpu(cpu) {
  if (cpu === null) return;
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)], { stdio: 'ignore' });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function waitOnline(worker) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('worker did not come online')),
      ONLINE_TIMEOUT_MS);
    worker.once('online', () => { clearTimeout(timer); resolve(); });
  });
}

function waitExit(worker) {
  return new Promise((resolve) => {
    if (worker.isDead()) { resolve(); return; }
    worker.once('exit', () => resolve());
  });
}

// Sequential ping-pong: the next message leaves only when the echo of the previous one
// is back, so each round trip pays the full serialize/write/read/parse cost both ways.
// The first `warmup` round trips are not counted (JIT and buffer growth), then
// `rounds` windows of `seconds` each are measured separately so the spread is visible.
// The CPU time of both processes over the measured windows is kept as well.
function pingPong(worker, makeMessage, isEcho, warmup, rounds, seconds) {
  return new Promise((resolve, reject) => {
    const pids = [process.pid, worker.process.pid];
    const rates = [];
    let sent = 0;
    let measuring = false;
    let measured = 0;
    let ticks = 0;
    let inWindow = 0;
    let windowStart = 0;
    const finish = (err) => {
      worker.off('message', onMessage);
      if (err) {
        reject(err);
      } else {
        ticks += cpuTicks(pids);
        resolve({ rates, cpuTicks: ticks, measured });
      }
    };
    const onMessage = (msg) => {
      if (!isEcho(msg, sent - 1)) {
        finish(new Error(`unexpected echo for message ${sent - 1}`));
        return;
      }
      if (!measuring) {
        if (sent >= warmup) {
          measuring = true;
          ticks = -cpuTicks(pids);
          windowStart = performance.now();
        }
      } else {
        inWindow += 1;
        measured += 1;
        const elapsed = (performance.now() - windowStart) / 1000;
        if (elapsed >= seconds) {
          rates.push(inWindow / elapsed);
          if (rates.length >= rounds) { finish(null); return; }
          inWindow = 0;
          windowStart = performance.now();
        }
      }
      worker.send(makeMessage(sent));
      sent += 1;
    };
    worker.on('message', onMessage);
    worker.send(makeMessage(sent));
    sent += 1;
  });
}

async function taskRtt(opts) {
  const worker = cluster.fork();
  try {
    await waitOnline(worker);
    moveToCpu(opts.primaryCpu);
    // Let the worker finish loading its script before its memory is read.
    await sleep(opts.settle * 1000);
    const rss = readRssBytes(worker.process.pid);

    const small = await pingPong(
      worker,
      (n) => ({ cmd: 'ping', n }),
      (msg, n) => msg !== null && typeof msg === 'object' && msg.n === n,
      200, opts.rounds, opts.seconds,
    );
    const payload = 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(
      Math.ceil(opts.payloadBytes / 36)).slice(0, opts.payloadBytes);
    const big = await pingPong(
      worker,
      () => payload,
      (msg) => typeof msg === 'string' && msg.length === payload.length,
      3, opts.rounds, opts.seconds,
    );
    return {
      worker_rss_bytes: rss,
      small_rtt_per_s: small.rates,
      small_cpu_ticks: [small.cpuTicks],
      small_measured: [small.measured],
      big_rtt_per_s: big.rates,
      big_cpu_ticks: [big.cpuTicks],
      big_measured: [big.measured],
      payload_bytes: payload.length,
    };
  } finally {
    const exited = waitExit(worker);
    worker.kill();
    await exited;
  }
}

async function forkAll(n) {
  const workers = [];
  let online = 0;
  let onOnline = null;
  const allOnline = new Promise((resolve) => {
    onOnline = () => { online += 1; if (online === n) resolve(); };
    cluster.on('online', onOnline);
  });
  const t0 = performance.now();
  try {
    for (let i = 0; i < n; i += 1) workers.push(cluster.fork());
    let timer = null;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${n} workers not online`)), ONLINE_TIMEOUT_MS);
    });
    await Promise.race([allOnline, timeout]);
    clearTimeout(timer);
    return (performance.now() - t0) / 1000;
  } finally {
    cluster.off('online', onOnline);
    const exits = workers.map(waitExit);
    for (const w of workers) w.kill();
    await Promise.all(exits);
  }
}

async function taskFork(opts) {
  const seconds = {};
  for (const n of opts.counts) {
    seconds[n] = [];
    for (let r = 0; r < opts.reps; r += 1) seconds[n].push(await forkAll(n));
  }
  return { fork_online_s: seconds };
}

async function primary() {
  const opts = parseArgs(process.argv.slice(2));
  cluster.setupPrimary({ serialization: opts.serialization });
  const tasks = { rtt: taskRtt, fork: taskFork };
  const task = tasks[opts.task];
  if (!task) throw new Error(`unknown task ${opts.task}`);
  const result = await task(opts);
  result.node_version = process.version;
  fs.writeFileSync(opts.out, JSON.stringify(result));
}

function worker() {
  process.on('message', (msg) => process.send(msg));
}

if (cluster.isPrimary) {
  // Never leave workers behind, whatever ends the primary.
  process.on('exit', () => {
    for (const w of Object.values(cluster.workers)) {
      if (!w.isDead()) w.process.kill('SIGKILL');
    }
  });
  primary().catch((err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exitCode = 1;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGKILL');
  });
} else {
  worker();
}
