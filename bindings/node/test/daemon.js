'use strict';
// A private shmbusd for a test file: the binary $SHMBUSD, on a socket in a temporary
// directory, stopped with SIGTERM by stop().
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const shmbus = require('..');

async function startDaemon(config) {
  const binary = process.env.SHMBUSD;
  if (!binary) throw new Error('SHMBUSD (the shmbusd binary) is not set');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-node-'));
  const bus = `node${process.pid}x${Math.floor(Math.random() * 1e6)}`;
  const socket = path.join(dir, 'bus.sock');
  const args = ['--bus', bus, '--socket', socket, '--log-level', 'warn'];
  if (config) {
    fs.writeFileSync(path.join(dir, 'shmbusd.toml'), config);
    args.push('-c', path.join(dir, 'shmbusd.toml'));
  }
  const child = spawn(binary, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  const options = { bus, socket };
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      shmbus.connect(options).quit();
      break;
    } catch (error) {
      if (error.code !== 'SHMBUS_ENODAEMON' || Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  return {
    options,
    env: { ...process.env, SHMBUS_BUS: bus, SHMBUS_SOCKET: socket },
    async stop() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Resolves once `predicate()` is true, polling every 5 ms; rejects after `ms`.
async function until(predicate, ms = 5000, what = 'the condition') {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

module.exports = { startDaemon, until };
