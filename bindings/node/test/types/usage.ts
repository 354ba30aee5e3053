// Compiled (not run) by test/types.test.js with tsc --strict: the declarations in
// lib/index.d.ts accept the package's documented uses and refuse a wrong one.
import * as shmbus from '../..';

async function main(): Promise<void> {
  const bus = shmbus.connect({ bus: 'b', socket: '/tmp/b.sock' });
  const receivers: number = bus.publish('chat:1', Buffer.from('x'));
  bus.publish('chat:1', new Uint8Array([1, 2]));
  const sub = bus.subscriber();
  await sub.subscribe('chat:1', (message: string, channel: string) => console.log(message, channel));
  await sub.pSubscribe(['chat:*'], (message: Buffer, channel: Buffer) => console.log(message.length, channel), true);
  await sub.subscribe('events-only');
  sub.on('lost', (info: shmbus.LostInfo) => console.log(info.lost, receivers));
  const counts: Record<string, number> = bus.pubsub.numsub('a', 'b');
  const patterns: number = bus.pubsub.numpat();
  const names: string[] = bus.pubSubChannels('chat:*');
  console.log(counts, patterns, names, sub.subscriptionCount);
  const v3 = shmbus.createClient();
  await v3.subscribe('notifications');
  v3.on('message', (channel: string, message: string | Buffer) => console.log(channel, message));
  await sub.quit();
  await bus.quit();
  // @ts-expect-error: a payload must be a string or bytes
  bus.publish('chat:1', 42);
}
void main;
