'use strict';
// @shmbus/socket.io-adapter: Socket.IO's cluster protocol (socket.io-adapter's
// ClusterAdapterWithHeartbeat: broadcasts with rooms / except / flags, acknowledgements,
// fetchSockets, socketsJoin / socketsLeave / disconnectSockets, serverSideEmit with acks,
// and a server count kept by heartbeats) carried over shmbus:
//
//   const { createAdapter } = require('@shmbus/socket.io-adapter');
//   io.adapter(createAdapter(shmbus.connect()));
//
// Channels, per namespace: `<key>#<nsp>#` for what every server hears, and
// `<key>#<nsp>#<uid>#` for the responses one server waits for. Messages are msgpack
// (notepack.io), so Buffers in packets survive. Between hosts, shmbus-bridge relays
// `<key>#*` through Redis (docs: the README's Socket.IO section); servers are counted by
// heartbeats rather than by subscriber counts, which a bridge would hide.
const { ClusterAdapterWithHeartbeat } = require('socket.io-adapter');
const { encode, decode } = require('notepack.io');
const shmbus = require('shmbus');

class ShmbusAdapter extends ClusterAdapterWithHeartbeat {
  /**
   * @param nsp the namespace
   * @param bus a shmbus Bus (shmbus.connect())
   * @param opts { key = 'socket.io', heartbeatInterval = 5000, heartbeatTimeout = 10000 }
   */
  constructor(nsp, bus, opts = {}) {
    super(nsp, opts);
    this.bus = bus;
    this.key = opts.key ?? 'socket.io';
    this.channel = `${this.key}#${nsp.name}#`;
    this.responseChannel = `${this.key}#${nsp.name}#${this.uid}#`;
    this.subscriber = bus.subscriber();
    this.subscriber.on('error', (error) => this.emitError(error));
    // Both subscriptions are in place when subscribe() returns (it is synchronous under
    // its promise), so init()'s first heartbeat is answered.
    this.subscriber.subscribe(this.channel, (message) => this.onRaw(message, false), true);
    this.subscriber.subscribe(this.responseChannel, (message) => this.onRaw(message, true), true);
  }

  onRaw(raw, isResponse) {
    let message;
    try {
      message = decode(raw);
    } catch (error) {
      // Something else published garbage on our channel: say so, never crash the server.
      this.emitError(new Error(`undecodable message on ${isResponse ? this.responseChannel : this.channel}: ${error.message}`));
      return;
    }
    if (isResponse) this.onResponse(message);
    else this.onMessage(message);
  }

  // An 'error' event only when someone listens (an unheard 'error' would throw).
  emitError(error) {
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  // A publish that fails (a message over the channel's limit, say) throws here, so the
  // emit() that caused it throws the library's error, which names the limit and the
  // [[channel]] rule that raises it; nothing is dropped silently.
  doPublish(message) {
    this.bus.publish(this.channel, encode(message));
    return Promise.resolve(''); // no connection state recovery offsets (as Redis pub/sub)
  }

  doPublishResponse(requesterUid, response) {
    this.bus.publish(`${this.key}#${this.nsp.name}#${requesterUid}#`, encode(response));
    return Promise.resolve();
  }

  close() {
    super.close();
    return this.subscriber.quit();
  }
}

/**
 * The adapter constructor for io.adapter().
 * @param busOrOptions a shmbus Bus, or shmbus.connect() options
 * @param opts { key, heartbeatInterval, heartbeatTimeout }
 */
function createAdapter(busOrOptions = {}, opts = {}) {
  const bus = busOrOptions instanceof shmbus.Bus ? busOrOptions : shmbus.connect(busOrOptions);
  return function (nsp) {
    return new ShmbusAdapter(nsp, bus, opts);
  };
}

module.exports = { createAdapter, ShmbusAdapter };
