'use strict';
// What bench/node_bench.js and bench/socketio_bench.js share: a private shmbusd and a
// redis-server on a free loopback port, started together and stopped together.
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// shmbusd from BUILD_DIR (with `daemonConfig` as its TOML, if given) and redis-server (with
// `redisArgs` added). Resolves to { env: the environment that reaches the bus, port: the
// Redis port, stop() }.
async function startServers({ build, name, daemonConfig, redisArgs = [] }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `shmbus-${name}-`));
  const bus = `${name}${process.pid}`;
  const socket = path.join(dir, 'bus.sock');
  const daemonArgs = ['--bus', bus, '--socket', socket, '--log-level', 'warn'];
  if (daemonConfig) {
    fs.writeFileSync(path.join(dir, 'shmbusd.toml'), daemonConfig);
    daemonArgs.push('-c', path.join(dir, 'shmbusd.toml'));
  }
  const daemon = spawn(path.join(build, 'daemon', 'shmbusd'), daemonArgs, { stdio: 'inherit' });
  const port = await freePort();
  const redis = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...redisArgs],
    { stdio: 'ignore' },
  );
  await sleep(500);
  return {
    env: { ...process.env, SHMBUS_BUS: bus, SHMBUS_SOCKET: socket },
    port,
    stop() {
      daemon.kill('SIGTERM');
      redis.kill('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// True if redis-server is on the PATH; else says the benchmark is skipped (its caller exits
// 77, meson's code for a skip).
function redisServerInstalled() {
  if (spawnSync('sh', ['-c', 'command -v redis-server']).status === 0) return true;
  console.log('SKIPPED: redis-server is not installed');
  return false;
}

module.exports = { sleep, freePort, startServers, redisServerInstalled };
