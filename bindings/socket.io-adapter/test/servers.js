'use strict';
// What the adapter's tests share: socket.io server processes that print "listening
// <port>" once ready, and calls to them through a client's acknowledgements.
const { spawn } = require('node:child_process');
const path = require('node:path');

// Starts `node ...args` (test/server.js unless given) with `env`; resolves to { child, port }
// once it listens, rejects if it exits first.
function startServer(env, args = [path.join(__dirname, 'server.js')]) {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening (\d+)/.exec(out);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.once('exit', (code) => reject(new Error(`server ${args.join(' ')} exited with ${code}`)));
  });
}

// Emits `event` with `args` and resolves to what the server acknowledges.
function call(client, event, ...args) {
  return new Promise((resolve) => client.emit(event, ...args, resolve));
}

module.exports = { startServer, call };
