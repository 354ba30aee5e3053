// Type declarations for the shmbus package (lib/index.js).
import { EventEmitter } from 'node:events';

export interface ConnectOptions {
  /** Bus name; default $SHMBUS_BUS, else "default". */
  bus?: string;
  /** Control socket; default $SHMBUS_SOCKET, else /run/shmbus/<bus>.sock. */
  socket?: string;
  /** Shown in the daemon's log. */
  clientName?: string;
  name?: string;
}

/** An Error from libshmbus: the library's message and its status as `code`. */
export interface ShmbusError extends Error {
  code:
    | 'SHMBUS_ENODAEMON' | 'SHMBUS_EDAEMONGONE' | 'SHMBUS_EPROTOCOL' | 'SHMBUS_EINVAL'
    | 'SHMBUS_ETOOLARGE' | 'SHMBUS_ELIMIT' | 'SHMBUS_EWOULDBLOCK' | 'SHMBUS_ETIMEDOUT'
    | 'SHMBUS_ESYSTEM' | 'SHMBUS_ECORRUPT' | 'SHMBUS_EPERMISSION' | 'SHMBUS_ENOMEM'
    | 'SHMBUS_EREFUSED' | 'SHMBUS_EINTERNAL' | 'SHMBUS_ECLOSED';
}

export type Name = string | Buffer;
export type Listener<T extends string | Buffer> = (message: T, channel: T) => unknown;

export interface LostInfo {
  channel: string;
  /** Messages of the channel missed (lapped) just before this one. */
  lost: number;
  sequence: number;
}

/** Subscribing, shared by Subscriber and Bus. Without a listener a name is held for the
 * 'message' / 'pmessage' events alone (node-redis v3 / ioredis style). */
export interface Subscribing {
  subscribe(channels: Name | Name[], listener?: Listener<string>, bufferMode?: false): Promise<void>;
  subscribe(channels: Name | Name[], listener: Listener<Buffer>, bufferMode: true): Promise<void>;
  pSubscribe(patterns: Name | Name[], listener?: Listener<string>, bufferMode?: false): Promise<void>;
  pSubscribe(patterns: Name | Name[], listener: Listener<Buffer>, bufferMode: true): Promise<void>;
  psubscribe(patterns: Name | Name[], listener?: Listener<any>, bufferMode?: boolean): Promise<void>;
  unsubscribe(channels?: Name | Name[], listener?: Listener<any>, bufferMode?: boolean): Promise<void>;
  pUnsubscribe(patterns?: Name | Name[], listener?: Listener<any>, bufferMode?: boolean): Promise<void>;
  punsubscribe(patterns?: Name | Name[], listener?: Listener<any>, bufferMode?: boolean): Promise<void>;
}
// Events of both: 'message' (channel, message), 'pmessage' (pattern, channel, message),
// 'lost' (LostInfo), 'error' (ShmbusError).

export declare class Subscriber extends EventEmitter {
  readonly isOpen: boolean;
  /** Channels plus patterns held (Redis's subscription count). */
  readonly subscriptionCount: number;
  connect(): Promise<this>;
  quit(): Promise<void>;
  disconnect(): Promise<void>;
}
export declare interface Subscriber extends Subscribing {}

export interface PubSubIntrospection {
  /** PUBSUB CHANNELS [pattern] */
  channels(pattern?: Name): string[];
  /** PUBSUB NUMSUB */
  numsub(...channels: (Name | Name[])[]): Record<string, number>;
  /** PUBSUB NUMPAT */
  numpat(): number;
}

export declare class Bus extends EventEmitter {
  readonly isOpen: boolean;
  readonly pubsub: PubSubIntrospection;
  constructor(options?: ConnectOptions);
  /** PUBLISH: the subscriptions that receive it. Synchronous; awaiting it works too. */
  publish(channel: Name, message: string | Buffer | Uint8Array): number;
  pubSubChannels(pattern?: Name): string[];
  pubSubNumSub(...channels: (Name | Name[])[]): Record<string, number>;
  pubSubNumPat(): number;
  /** A subscriber of its own on the same bus (node-redis: duplicate()). */
  subscriber(): Subscriber;
  duplicate(): Subscriber;
  connect(): Promise<this>;
  quit(): Promise<void>;
  disconnect(): Promise<void>;
}
export declare interface Bus extends Subscribing {}

export declare function connect(options?: ConnectOptions): Bus;
export declare function createClient(options?: ConnectOptions): Bus;
