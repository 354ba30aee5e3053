import type { Namespace } from 'socket.io';
import type { ClusterAdapterOptions, ClusterAdapterWithHeartbeat } from 'socket.io-adapter';
import type { Bus, ConnectOptions } from 'shmbus';

export interface ShmbusAdapterOptions extends ClusterAdapterOptions {
  /** Channel prefix; default "socket.io". */
  key?: string;
}

export declare class ShmbusAdapter extends ClusterAdapterWithHeartbeat {
  constructor(nsp: Namespace, bus: Bus, opts?: ShmbusAdapterOptions);
}

export declare function createAdapter(
  busOrOptions?: Bus | ConnectOptions,
  opts?: ShmbusAdapterOptions,
): (nsp: Namespace) => ShmbusAdapter;
