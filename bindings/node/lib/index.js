'use strict';
// shmbus for Node.js, shaped like node-redis v4's pub/sub:
//
//   const shmbus = require('shmbus');
//   const bus = shmbus.connect();                 // $SHMBUS_BUS / $SHMBUS_SOCKET, or options
//   bus.publish('chat:42', 'hello');              // -> receivers, as PUBLISH
//   const sub = bus.subscriber();                 // node-redis: client.duplicate()
//   await sub.subscribe('chat:42', (message, channel) => ...);
//   await sub.pSubscribe('chat:*', (message, channel) => ...);
//
// Messages are delivered on the event loop from the native layer (src/addon.cc), a batch
// per wake-up; a subscriber keeps the process alive only while it holds a subscription.
const { EventEmitter } = require('node:events');
const path = require('node:path');

const native = require(path.join(__dirname, '..', 'build', 'Release', 'shmbus.node'));

// A message's numbers in a native batch's meta array (src/addon.cc, OnReadable).
const CHANNEL = 0;
const PATTERN = 1;
const OFFSET = 2;
const LENGTH = 3;
const SEQUENCE = 4;
const LOST = 5;
const META = 6;

// Channel handles a Bus keeps open for publishing (see Bus.publish).
const CHANNEL_CACHE = 1024;

function nativeOptions(options) {
  const o = options ?? {};
  if (typeof o !== 'object') throw new TypeError(`shmbus options must be an object, not ${typeof o}`);
  const out = { bus: o.bus, socket: o.socket, clientName: o.clientName ?? o.name };
  for (const [key, value] of Object.entries(out)) {
    if (value !== undefined && typeof value !== 'string') {
      throw new TypeError(`shmbus option ${key} must be a string, not ${typeof value}`);
    }
  }
  return out;
}

function asList(names, what) {
  const list = Array.isArray(names) ? names : [names];
  for (const name of list) {
    if (typeof name !== 'string' && !Buffer.isBuffer(name)) {
      throw new TypeError(`a ${what} must be a string or a Buffer, not ${typeof name}`);
    }
  }
  return list;
}

// A name's bytes as a latin1 string (one character per byte): the key the native layer
// gives each message's channel and pattern, and the listener maps' key.
function keyOf(name) {
  return Buffer.isBuffer(name) ? name.toString('latin1') : Buffer.from(name).toString('latin1');
}

// Listener sets of one kind (channels or patterns), by name, split by buffer mode as
// node-redis keeps them.
class Listeners {
  constructor() {
    this.byKey = new Map(); // keyOf(name) -> { strings: Set, buffers: Set }
  }
  // Adds a listener; true if the name is new (to be subscribed).
  add(name, listener, bufferMode) {
    const key = keyOf(name);
    let entry = this.byKey.get(key);
    const added = entry === undefined;
    if (added) {
      entry = { strings: new Set(), buffers: new Set() };
      this.byKey.set(key, entry);
    }
    if (listener) (bufferMode ? entry.buffers : entry.strings).add(listener);
    return added;
  }
  // Removes one listener (or all of the name's); true once the name has none left.
  remove(name, listener, bufferMode) {
    const key = keyOf(name);
    const entry = this.byKey.get(key);
    if (entry === undefined) return false;
    if (listener) {
      (bufferMode ? entry.buffers : entry.strings).delete(listener);
      if (entry.strings.size + entry.buffers.size > 0) return false;
    }
    this.byKey.delete(key);
    return true;
  }
  names() {
    return [...this.byKey.keys()].map((key) => Buffer.from(key, 'latin1'));
  }
  anyBuffers() {
    for (const entry of this.byKey.values()) if (entry.buffers.size > 0) return true;
    return false;
  }
}

// A listener's exception goes to 'uncaughtException' once the call returns, without
// costing the rest of the batch (messages already taken from the subscription) or the
// other listeners of the same message.
function call(listener, a, b) {
  try {
    listener(a, b);
  } catch (error) {
    process.nextTick(() => {
      throw error;
    });
  }
}

class Subscriber extends EventEmitter {
  constructor(options) {
    super();
    this._options = options;
    this._native = null; // opened on the first subscription
    this._channels = new Listeners();
    this._patterns = new Listeners();
    this._byNumber = []; // a batch's name number -> { key, text, buffer }
    this._eventBuffers = false;
    this.isOpen = true;
  }

  // node-redis's client.connect(): nothing to wait for here, but code written for it calls it.
  async connect() {
    return this;
  }

  _open() {
    if (!this.isOpen) {
      const error = new Error('this shmbus subscriber was closed: create another with bus.subscriber()');
      error.code = 'SHMBUS_ECLOSED';
      throw error;
    }
    if (this._native === null) {
      this._native = new native.Subscriber(
        nativeOptions(this._options),
        (data, meta, names, reset) => this._deliver(data, meta, names, reset),
        (error) => this.emit('error', error),
      );
    }
    return this._native;
  }

  // 'message' / 'pmessage' events carry Buffers once any listener is in buffer mode.
  _updateMode() {
    this._eventBuffers = this._channels.anyBuffers() || this._patterns.anyBuffers();
  }

  // SUBSCRIBE: listener(message, channel) for each message of these channels; with
  // bufferMode, both as Buffers.
  async subscribe(channels, listener, bufferMode = false) {
    this._add(this._channels, channels, listener, bufferMode, 'channel', 'subscribe');
  }

  // PSUBSCRIBE: listener(message, channel) for each message of a channel the glob matches.
  async pSubscribe(patterns, listener, bufferMode = false) {
    this._add(this._patterns, patterns, listener, bufferMode, 'pattern', 'psubscribe');
  }

  _add(listeners, names, listener, bufferMode, what, call) {
    const list = asList(names, what);
    // No listener: the names are held for the 'message' / 'pmessage' events alone (the
    // style of node-redis v3 and ioredis).
    if (listener !== undefined && typeof listener !== 'function') {
      throw new TypeError(`${call}(${what}s, listener): listener must be a function`);
    }
    const sub = this._open();
    const fresh = list.filter((name) => listeners.add(name, listener, bufferMode));
    this._updateMode();
    if (fresh.length === 0) return;
    try {
      sub[call](fresh); // the daemon's SUBSCRIBE, only for names new to this subscriber
    } catch (error) {
      for (const name of fresh) listeners.remove(name);
      this._updateMode();
      throw error;
    }
  }

  // UNSUBSCRIBE: with a listener, removes just that one; without channels, every channel.
  async unsubscribe(channels, listener, bufferMode = false) {
    await this._drop(this._channels, channels, listener, bufferMode, 'channel', 'unsubscribe');
  }

  async pUnsubscribe(patterns, listener, bufferMode = false) {
    await this._drop(this._patterns, patterns, listener, bufferMode, 'pattern', 'punsubscribe');
  }

  // ioredis's and node-redis v3's spelling.
  psubscribe(patterns, listener, bufferMode = false) {
    return this.pSubscribe(patterns, listener, bufferMode);
  }
  punsubscribe(patterns, listener, bufferMode = false) {
    return this.pUnsubscribe(patterns, listener, bufferMode);
  }

  async _drop(listeners, names, listener, bufferMode, what, call) {
    // No names: every one, whatever listener is given (as node-redis).
    const all = names === undefined || (Array.isArray(names) && names.length === 0);
    const list = all ? listeners.names() : asList(names, what);
    const gone = list.filter((name) => listeners.remove(name, all ? undefined : listener, bufferMode));
    this._updateMode();
    if (gone.length > 0 && this._native !== null) this._native[call](gone);
  }

  // Every channel and pattern this subscriber holds (Redis's subscription count).
  get subscriptionCount() {
    return this._native === null ? 0 : this._native.count();
  }

  // Drops every subscription and the connection (node-redis: quit / disconnect).
  async quit() {
    this.isOpen = false;
    if (this._native !== null) this._native.close();
    this._native = null;
    this._channels = new Listeners();
    this._patterns = new Listeners();
  }

  disconnect() {
    return this.quit();
  }

  // A batch (src/addon.cc, OnReadable): payloads are read out of `data` only for the
  // listeners that want them; a Buffer given to a buffer-mode listener is a view of the
  // batch's `data`, shared with the other messages of that batch.
  _deliver(data, meta, names, reset) {
    if (reset) this._byNumber = [];
    const byNumber = this._byNumber;
    for (let i = 0; i < names.length; i += 2) {
      const key = names[i + 1];
      // A name crosses once per numbering (src/addon.cc), so its forms are made once here.
      const buffer = Buffer.from(key, 'latin1');
      byNumber[names[i]] = { key, text: buffer.toString(), buffer };
    }
    const events = this.listenerCount('message') + this.listenerCount('pmessage') > 0;
    for (let i = 0; i < meta.length && this.isOpen; i += META) {
      const channel = byNumber[meta[i + CHANNEL]];
      const p = meta[i + PATTERN];
      const pattern = p < 0 ? null : byNumber[p];
      const start = meta[i + OFFSET];
      const end = start + meta[i + LENGTH];
      let text;
      let buffer;
      const entry = pattern === null ? this._channels.byKey.get(channel.key) : this._patterns.byKey.get(pattern.key);
      if (entry !== undefined) {
        if (entry.buffers.size > 0) {
          buffer = data.subarray(start, end);
          for (const listener of entry.buffers) call(listener, buffer, channel.buffer);
        }
        if (entry.strings.size > 0) {
          text = data.toString('utf8', start, end);
          for (const listener of entry.strings) call(listener, text, channel.text);
        }
      }
      const lost = meta[i + LOST];
      if (lost > 0) call(() => this.emit('lost', { channel: channel.text, lost, sequence: meta[i + SEQUENCE] }));
      if (events) {
        const payload = this._eventBuffers
          ? (buffer ?? data.subarray(start, end))
          : (text ?? data.toString('utf8', start, end));
        if (pattern === null) call(() => this.emit('message', channel.text, payload));
        else call(() => this.emit('pmessage', pattern.text, channel.text, payload));
      }
    }
  }
}

// A connection for publishing and introspection; it can subscribe too (node-redis v3 and
// ioredis style: subscribe('a') then on('message', (channel, message) => ...)), through a
// subscriber of its own made on first use, whose events it repeats.
class Bus extends EventEmitter {
  constructor(options = {}) {
    super();
    this._options = options;
    this._subscriber = null;
    // Open channels by name (string names only): a publish to one goes straight to its
    // handle. Bounded: past CHANNEL_CACHE names the handles are closed and it starts over.
    this._channels = new Map();
    this._native = new native.Bus(nativeOptions(options));
    this.isOpen = true;
    const bus = this;
    // PUBSUB CHANNELS / NUMSUB / NUMPAT, as node-redis's client.pubSub* calls.
    this.pubsub = {
      channels(pattern) {
        return bus._native.channels(pattern).map((name) => name.toString());
      },
      numsub(...channels) {
        const list = channels.flat();
        const counts = bus._native.numsub(list);
        return Object.fromEntries(list.map((name, i) => [name.toString(), counts[i]]));
      },
      numpat() {
        return bus._native.numpat();
      },
    };
  }

  // PUBLISH: the number of subscriptions that receive it (by channel and by pattern).
  // Synchronous: a copy into shared memory; `await bus.publish(...)` works as with node-redis.
  publish(channel, message) {
    if (typeof channel !== 'string' || !this.isOpen) return this._native.publish(channel, message);
    let handle = this._channels.get(channel);
    if (handle === undefined) {
      // Past CHANNEL_CACHE names, the rest go through the library's own cache (an LRU of
      // 4,096): closing every handle at once and reopening them would cost a daemon
      // round trip per publish (and 1,024 at once) for a rotation of more names than that.
      if (this._channels.size >= CHANNEL_CACHE) return this._native.publish(channel, message);
      handle = this._native.openChannel(channel);
      this._channels.set(channel, handle);
    }
    return handle.publish(message);
  }

  _closeChannels() {
    for (const handle of this._channels.values()) handle.close();
    this._channels.clear();
  }

  pubSubChannels(pattern) {
    return this.pubsub.channels(pattern);
  }
  pubSubNumSub(...channels) {
    return this.pubsub.numsub(...channels);
  }
  pubSubNumPat() {
    return this.pubsub.numpat();
  }

  _ownSubscriber() {
    if (this._subscriber === null) {
      this._subscriber = new Subscriber(this._options);
      for (const event of ['message', 'pmessage', 'lost', 'error']) {
        this._subscriber.on(event, (...args) => this.emit(event, ...args));
      }
    }
    return this._subscriber;
  }
  subscribe(channels, listener, bufferMode = false) {
    return this._ownSubscriber().subscribe(channels, listener, bufferMode);
  }
  pSubscribe(patterns, listener, bufferMode = false) {
    return this._ownSubscriber().pSubscribe(patterns, listener, bufferMode);
  }
  unsubscribe(channels, listener, bufferMode = false) {
    return this._ownSubscriber().unsubscribe(channels, listener, bufferMode);
  }
  pUnsubscribe(patterns, listener, bufferMode = false) {
    return this._ownSubscriber().pUnsubscribe(patterns, listener, bufferMode);
  }
  psubscribe(patterns, listener, bufferMode = false) {
    return this.pSubscribe(patterns, listener, bufferMode);
  }
  punsubscribe(patterns, listener, bufferMode = false) {
    return this.pUnsubscribe(patterns, listener, bufferMode);
  }

  // A subscriber of its own on the same bus (node-redis: client.duplicate()).
  subscriber() {
    if (!this.isOpen) {
      const error = new Error('this shmbus connection was closed: connect again with shmbus.connect()');
      error.code = 'SHMBUS_ECLOSED';
      throw error;
    }
    return new Subscriber(this._options);
  }
  duplicate() {
    return this.subscriber();
  }

  async connect() {
    return this;
  }

  async quit() {
    this.isOpen = false;
    this._closeChannels();
    this._native.close();
    if (this._subscriber !== null) await this._subscriber.quit();
  }

  disconnect() {
    return this.quit();
  }
}

function connect(options = {}) {
  return new Bus(options);
}

module.exports = { connect, Bus, Subscriber, createClient: connect };
