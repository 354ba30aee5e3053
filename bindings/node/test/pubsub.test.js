'use strict';
// The shmbus package against a real shmbusd: node-redis v4's pub/sub semantics, patterns,
// Buffers, a long stream, errors, a subscriber process killed, and a process that exits by
// itself once nothing is subscribed.
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { after, before, test } = require('node:test');
const shmbus = require('..');
const { startDaemon, until } = require('./daemon');

let daemon;
let bus;
before(async () => {
  daemon = await startDaemon('[[channel]]\npattern = "stream:*"\nring_bytes = "4MiB"\n');
  bus = shmbus.connect(daemon.options);
});
after(async () => {
  await bus.quit();
  await daemon.stop();
});

test('subscribe delivers (message, channel) to each listener, and PUBLISH counts receivers', async () => {
  const sub = bus.subscriber();
  const a = [];
  const b = [];
  await sub.subscribe('news', (message, channel) => a.push([message, channel]));
  await sub.subscribe(['news', 'sport'], (message, channel) => b.push([message, channel]));
  assert.equal(sub.subscriptionCount, 2);
  assert.equal(bus.publish('news', 'hello'), 1); // one subscription, however many listeners
  assert.equal(await bus.publish('sport', 'goal'), 1); // awaitable, as node-redis's
  assert.equal(bus.publish('weather', 'rain'), 0);
  await until(() => b.length === 2, 5000, 'two messages');
  assert.deepEqual(a, [['hello', 'news']]);
  assert.deepEqual(b, [['hello', 'news'], ['goal', 'sport']]);
  await sub.quit();
});

test('a channel and a pattern: the message, then the pmessage, in publish order', async () => {
  const sub = bus.subscriber();
  const got = [];
  await sub.subscribe('user:1', (m, c) => got.push(['message', c, m]));
  await sub.pSubscribe('user:*', (m, c) => got.push(['pmessage', c, m]));
  assert.equal(bus.publish('user:1', 'a'), 2);
  assert.equal(bus.publish('user:2', 'b'), 1);
  await until(() => got.length === 3);
  assert.deepEqual(got, [
    ['message', 'user:1', 'a'],
    ['pmessage', 'user:1', 'a'],
    ['pmessage', 'user:2', 'b'],
  ]);
  assert.equal(bus.pubsub.numpat(), 1);
  await sub.pUnsubscribe('user:*');
  assert.equal(bus.publish('user:2', 'c'), 0);
  await sub.quit();
});

test('unsubscribe removes one listener, then the channel once it has none', async () => {
  const sub = bus.subscriber();
  const a = [];
  const b = [];
  const la = (m) => a.push(m);
  const lb = (m) => b.push(m);
  await sub.subscribe('u', la);
  await sub.subscribe('u', lb);
  await sub.unsubscribe('u', la);
  assert.equal(bus.publish('u', '1'), 1);
  await until(() => b.length === 1);
  assert.deepEqual(a, []);
  await sub.unsubscribe('u', lb);
  assert.equal(sub.subscriptionCount, 0);
  assert.equal(bus.publish('u', '2'), 0);
  assert.deepEqual(bus.pubsub.numsub('u'), { u: 0 });
  await sub.quit();
});

test('buffer mode: any bytes, names and payloads, arrive as Buffers', async () => {
  const sub = bus.subscriber();
  const got = [];
  const binary = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x80]);
  const name = Buffer.from([0x63, 0xff, 0x00, 0x31]); // not UTF-8
  await sub.subscribe(name, (m, c) => got.push([m, c]), true);
  await sub.subscribe('text', (m, c) => got.push([m, c]), true);
  assert.equal(bus.publish(name, binary), 1);
  assert.equal(bus.publish('text', 'é'), 1);
  await until(() => got.length === 2);
  assert.deepEqual(got[0][0], binary);
  assert.deepEqual(got[0][1], name);
  assert.deepEqual(got[1], [Buffer.from('é'), Buffer.from('text')]);
  // A typed array's view publishes just its bytes.
  const strings = [];
  await sub.subscribe('text', (m) => strings.push(m));
  bus.publish('text', new Uint8Array([0x61, 0x62, 0x63]).subarray(1));
  await until(() => strings.length === 1);
  assert.equal(strings[0], 'bc');
  await sub.quit();
});

test('a long stream arrives whole and in order, the loop staying free meanwhile', async () => {
  const sub = bus.subscriber();
  const total = 200000;
  let next = 0;
  let outOfOrder = 0;
  let lost = 0;
  sub.on('lost', (info) => (lost += info.lost));
  await sub.subscribe('stream:1', (m) => {
    if (Number(m) !== next) outOfOrder += 1;
    next = Number(m) + 1;
  });
  let timerTicks = 0;
  const timer = setInterval(() => (timerTicks += 1), 1);
  // Chunks smaller than a delivery batch, with a turn of the loop between them: a
  // producer that outpaces its subscriber for long enough is lapped (counted in 'lost').
  for (let sent = 0; sent < total; ) {
    for (const end = sent + 500; sent < end; sent += 1) bus.publish('stream:1', String(sent));
    await new Promise((resolve) => setImmediate(resolve));
  }
  await until(() => next === total, 30000, `${total} messages`);
  clearInterval(timer);
  assert.equal(outOfOrder, 0);
  assert.equal(lost, 0);
  assert.ok(timerTicks > 0, 'timers ran while messages were delivered');
  await sub.quit();
});

test('errors carry the library message and a code', async () => {
  assert.throws(() => bus.publish('', 'x'), { code: 'SHMBUS_EINVAL', message: /names are 1 to 1024 bytes/ });
  assert.throws(() => bus.publish('big', Buffer.alloc(64 << 20)), {
    code: 'SHMBUS_ETOOLARGE',
    message: /exceeds channel 'big' limit .* raise it with a \[\[channel\]\] rule/,
  });
  assert.throws(() => bus.publish('c', { not: 'bytes' }), TypeError);
  assert.throws(() => shmbus.connect({ bus: 'nobody', socket: '/nonexistent/bus.sock' }), {
    code: 'SHMBUS_ENODAEMON',
    message: /no shmbusd answers on/,
  });
  const sub = bus.subscriber();
  await assert.rejects(sub.subscribe('x', 42), TypeError); // a listener that is no function
  assert.throws(() => shmbus.connect({ bus: 5 }), { name: 'TypeError', message: /option bus must be a string/ });
  await assert.rejects(sub.pSubscribe('', () => {}), { code: 'SHMBUS_EINVAL', message: /1 to 1024 bytes/ });
  await sub.quit();
  await assert.rejects(sub.subscribe('x', () => {}), { code: 'SHMBUS_ECLOSED' });
});

function node(code) {
  const child = spawn(process.execPath, ['-e', code], {
    env: daemon.env,
    cwd: __dirname,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  child.output = '';
  child.stdout.on('data', (d) => (child.output += d));
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

test('a subscriber process killed mid-stream leaves the subscriber count', async () => {
  const child = node(`
    const sub = require('..').connect().subscriber();
    sub.subscribe('killed', () => {}).then(() => console.log('ready'));`);
  await until(() => child.output.includes('ready'), 10000, 'the child to subscribe');
  assert.deepEqual(bus.pubsub.numsub('killed'), { killed: 1 });
  for (let i = 0; i < 1000; i += 1) bus.publish('killed', 'x');
  child.kill('SIGKILL');
  await child.exited;
  await until(() => bus.pubsub.numsub('killed').killed === 0, 10000, 'the daemon to see the death');
  assert.equal(bus.publish('killed', 'after'), 0);
});

test('a process exits by itself once nothing is subscribed, not before', async () => {
  const child = node(`
    const bus = require('..').connect();
    const sub = bus.subscriber();
    sub.subscribe('bye', async (m) => {
      console.log('got ' + m);
      await sub.unsubscribe('bye');
    }).then(() => console.log('ready'));`);
  await until(() => child.output.includes('ready'), 10000, 'the child to subscribe');
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(child.exitCode, null, 'a subscribed process stays alive');
  bus.publish('bye', 'now');
  const { code } = await child.exited;
  assert.equal(code, 0);
  assert.match(child.output, /got now/);
});

test("node-redis v3 / ioredis style: a client subscribes without listeners and hears 'message' events", async () => {
  const client = shmbus.createClient(daemon.options);
  const got = [];
  client.on('message', (channel, message) => got.push(['message', channel, message]));
  client.on('pmessage', (pattern, channel, message) => got.push(['pmessage', pattern, channel, message]));
  await client.subscribe('notifications');
  await client.psubscribe('chat:*');
  assert.equal(client.publish('notifications', 'n1'), 1);
  assert.equal(client.publish('chat:1', 'c1'), 1);
  await until(() => got.length === 2);
  assert.deepEqual(got, [
    ['message', 'notifications', 'n1'],
    ['pmessage', 'chat:*', 'chat:1', 'c1'],
  ]);
  await client.unsubscribe();
  await client.punsubscribe();
  assert.equal(client.publish('notifications', 'n2'), 0);
  await client.quit();
  assert.throws(() => client.publish('notifications', 'n3'), { code: 'SHMBUS_ECLOSED' });
});

test('a throwing listener costs neither the rest of its batch nor the other listeners', async () => {
  // In a process of its own: the test runner takes 'uncaughtException' for itself.
  const child = node(`
    const bus = require('..').connect();
    const sub = bus.subscriber();
    const first = [], second = [], thrown = [];
    process.on('uncaughtException', (error) => thrown.push(error.message));
    (async () => {
      await sub.subscribe('throwing', (m) => {
        first.push(m);
        if (m === '2') throw new Error('listener failed on 2');
      });
      await sub.subscribe('throwing', (m) => second.push(m));
      for (let i = 0; i < 10; i += 1) bus.publish('throwing', String(i));
      const wait = setInterval(() => {
        if (second.length < 10 || thrown.length < 1) return;
        clearInterval(wait);
        console.log(JSON.stringify({ first: first.length, second: second.length, thrown }));
        sub.quit();
      }, 5);
    })();`);
  const { code } = await child.exited;
  assert.equal(code, 0);
  assert.deepEqual(JSON.parse(child.output), { first: 10, second: 10, thrown: ['listener failed on 2'] });
});

test('views of a SharedArrayBuffer publish their bytes, as any typed array', async () => {
  const sub = bus.subscriber();
  const got = [];
  await sub.subscribe('shared', (m) => got.push(m), true);
  const shared = new Uint8Array(new SharedArrayBuffer(16));
  shared.set([1, 2, 3, 4, 5, 6, 7, 8], 4);
  assert.equal(bus.publish('shared', shared.subarray(4, 8)), 1);
  assert.equal(bus.publish(Buffer.from(shared.buffer, 4, 2), Buffer.from(shared.buffer, 6, 2)), 0);
  await until(() => got.length === 1);
  assert.deepEqual(got[0], Buffer.from([1, 2, 3, 4]));
  await sub.quit();
});

test('unsubscribe() without names drops every channel, whatever listener is given', async () => {
  const sub = bus.subscriber();
  const listener = () => {};
  await sub.subscribe(['all:1', 'all:2'], listener);
  await sub.subscribe('all:3', () => {});
  await sub.unsubscribe(undefined, listener);
  assert.equal(sub.subscriptionCount, 0);
  await sub.quit();
});

test('worker threads with subscribers end, or are terminated mid-stream, without harm', async () => {
  // The main thread never loads the addon here: a worker's teardown must wait for the
  // addon's last libuv callback before the addon is unloaded.
  const child = node(`
    const { Worker } = require('node:worker_threads');
    const code = "const { parentPort } = require('node:worker_threads');" +
      "const bus = require('${path.join(__dirname, '..').replace(/\\/g, '/')}').connect();" +
      "const sub = bus.subscriber(); let n = 0;" +
      "sub.subscribe('w', () => { n += 1; }).then(() => parentPort.postMessage('ready'));" +
      "parentPort.on('message', async (m) => { if (m === 'stop') { await sub.unsubscribe(); parentPort.close(); } });";
    const { spawnSync } = require('node:child_process');
    (async () => {
      for (let round = 0; round < 6; round += 1) {
        const worker = new Worker(code, { eval: true });
        await new Promise((resolve) => worker.once('message', resolve));
        // A publisher process keeps the channel busy while the worker goes.
        const publisher = require('node:child_process').spawn(process.execPath, ['-e',
          "const b = require('${path.join(__dirname, '..').replace(/\\/g, '/')}').connect();" +
          "for (let i = 0; i < 20000; i += 1) b.publish('w', 'x');"], { stdio: 'inherit' });
        await new Promise((resolve) => setTimeout(resolve, 2));
        if (round % 2 === 0) await worker.terminate();
        else { worker.postMessage('stop'); await new Promise((resolve) => worker.once('exit', resolve)); }
        await new Promise((resolve) => publisher.once('exit', resolve));
      }
      console.log('survived');
    })();`);
  const { code, signal } = await child.exited;
  assert.equal(signal, null);
  assert.equal(code, 0);
  assert.match(child.output, /survived/);
});

test('a pattern over more distinct channels than a batch numbers keeps every name right', async () => {
  const sub = bus.subscriber();
  const wrong = [];
  let got = 0;
  await sub.pSubscribe('many:*', (message, channel) => {
    if (channel !== `many:${message}`) wrong.push([channel, message]);
    got += 1;
  });
  const total = 10000; // past the 4,096 names a subscriber numbers before starting over
  for (let sent = 0; sent < total; ) {
    for (const end = sent + 500; sent < end; sent += 1) bus.publish(`many:${sent}`, String(sent));
    await new Promise((resolve) => setImmediate(resolve));
  }
  await until(() => got === total, 10000, `${total} messages`);
  assert.deepEqual(wrong, []);
  await sub.quit();
});

test('workers terminated while a flood reaches their subscribers leave the process alive', async () => {
  // The main thread floods a channel and a pattern while each worker is terminated in the
  // middle of building a batch: no napi call may be trusted then.
  const child = node(`
    const { Worker } = require('node:worker_threads');
    const pkg = ${JSON.stringify(path.join(__dirname, '..'))};
    const code = "const { parentPort } = require('node:worker_threads');" +
      "const sub = require(" + JSON.stringify(pkg) + ").connect().subscriber();" +
      "sub.subscribe('wt', () => {}, true); sub.pSubscribe('wt:*', () => {});" +
      "parentPort.postMessage('ready');";
    const bus = require(pkg).connect();
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    let stop = false;
    (async () => {
      for (let i = 0; !stop; await sleep(1))
        for (let k = 0; k < 2000; k += 1) { bus.publish('wt', 'p' + i++); bus.publish('wt:' + (k % 300), 'x'); }
    })();
    (async () => {
      for (let round = 0; round < 12; round += 1) {
        const worker = new Worker(code, { eval: true });
        await new Promise((resolve) => worker.once('message', resolve));
        await sleep(20 + (round % 5) * 7);
        await worker.terminate();
      }
      stop = true;
      console.log('survived');
      await bus.quit();
    })();`);
  const { code, signal } = await child.exited;
  assert.equal(signal, null);
  assert.equal(code, 0);
  assert.match(child.output, /survived/);
});

test('payloads start 8-byte aligned, so a Float64Array can view them in place', async () => {
  const sub = bus.subscriber();
  const doubles = [];
  await sub.subscribe(
    'aligned',
    (m) => {
      if (m.length % 8 === 0) doubles.push([...new Float64Array(m.buffer, m.byteOffset, m.length / 8)]);
    },
    true,
  );
  bus.publish('aligned', 'abc'); // an odd length first, in the same batch
  bus.publish('aligned', Buffer.from(new Float64Array([1.5, -2.25]).buffer));
  await until(() => doubles.length === 1);
  assert.deepEqual(doubles[0], [1.5, -2.25]);
  await sub.quit();
});
