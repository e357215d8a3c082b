// The PacketFlow v1.0 spec's TypeScript reactor, kept in the spec's shape (start/stop/register/
// submit, a pending map keyed by seq, a heartbeat on open, handleMessage's switch, processPacket
// answering `submit` frames with seq 0), with only what it needs to be correct:
//   - start() resolves once the socket is open (rejects if it fails to open);
//   - the 30 s heartbeat interval is cleared on stop();
//   - each request's 30 s timeout timer is cleared when its answer arrives (otherwise every
//     submit keeps the process alive for 30 s);
//   - results and error frames are matched to their request by seq (the node echoes the submit's
//     seq; see docs/PROTOCOL.md), an error frame rejects with a PacketFlowError that carries
//     the frame's code, and a closed socket rejects whatever is still pending;
//   - heartbeat frames are handled (the spec's switch dropped them): a heartbeat answering one of
//     ours resolves heartbeat(), and every heartbeat is passed to config.onHeartbeat;
//   - config.onClose is told when the socket closes (serve.ts exits when its link drops).
// It answers the `submit` frames a node forwards to it (hub routing) exactly as the spec does:
// a result with seq 0 and the packet's id, PF001 when it has no handler, PF500 when one throws.
// It announces nothing (no capabilities in its heartbeats): a node learns what it runs by asking.
import { WebSocket } from 'ws';
import { randomUUID } from 'crypto';

// Core packet structure
export interface Packet {
  readonly version: "1.0";
  readonly id: string;
  readonly group: "cf" | "df" | "ed" | "co" | "mc" | "rm";
  readonly element: string;
  readonly data: unknown;
  readonly priority: number; // 1-10
  readonly timeout_ms?: number;
  readonly dependencies?: string[];
  readonly metadata?: Record<string, unknown>;
}

// WebSocket message frame
export interface Message {
  readonly type: "submit" | "result" | "error" | "heartbeat";
  readonly seq: number;
  readonly payload: unknown;
}

// Processing result
export interface Result {
  readonly packet_id: string;
  readonly status: "success" | "error";
  readonly data?: unknown;
  readonly error?: {
    readonly code: string;
    readonly message: string;
  };
  readonly duration_ms: number;
}

// Payload of an `error` frame: the node could not accept the message.
export interface ErrorPayload {
  readonly code: string;
  readonly message: string;
  readonly packet_id?: string;
}

export class PacketFlowError extends Error {
  readonly code: string;
  readonly packet_id?: string;
  readonly seq: number;

  constructor(seq: number, payload: ErrorPayload) {
    super(`${payload?.code}: ${payload?.message}`);
    this.name = 'PacketFlowError';
    this.code = payload?.code;
    this.packet_id = payload?.packet_id;
    this.seq = seq;
  }
}

export interface ReactorConfig {
  readonly endpoint: string;
  readonly heartbeatIntervalMs?: number; // default 30 000, as in the spec
  readonly requestTimeoutMs?: number; // default 30 000, as in the spec
  readonly onHeartbeat?: (message: Message) => void;
  readonly onClose?: (code: number, reason: string) => void;
}

interface PacketHandler {
  readonly handler: (data: any) => Promise<unknown>;
  readonly group: string;
  readonly element: string;
}

interface PendingRequest {
  readonly resolve: (value: any) => void;
  readonly reject: (reason: unknown) => void;
  readonly timestamp: number;
  readonly timer: ReturnType<typeof setTimeout>;
}

export type SubmitPacket = Omit<Packet, 'version' | 'id'> & { readonly id?: string };

export class PacketFlowReactor {
  private ws: WebSocket | null = null;
  private handlers = new Map<string, PacketHandler>();
  private pending = new Map<number, PendingRequest>();
  private heartbeats = new Map<number, PendingRequest>();
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private sequence = 0;
  // seq of the heartbeat sent on 'open' (the spec sends one there)
  openHeartbeatSeq: number | null = null;

  constructor(private config: ReactorConfig) {}

  async start(): Promise<void> {
    const ws = new WebSocket(this.config.endpoint);
    this.ws = ws;
    ws.on('message', this.handleMessage.bind(this));
    ws.on('close', (code: number, reason: Buffer) => {
      this.failPending(new Error('connection closed'));
      this.config.onClose?.(code, reason.toString());
    });
    ws.on('open', () => { this.openHeartbeatSeq = this.sendHeartbeat(); });

    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      ws.once('error', onError);
      ws.once('open', () => {
        ws.off('error', onError);
        ws.on('error', (error) => console.error('PacketFlowReactor socket error:', error));
        resolve();
      });
    });

    // Heartbeat every 30 seconds
    this.heartbeatTimer = setInterval(() => this.sendHeartbeat(),
                                      this.config.heartbeatIntervalMs ?? 30000);
  }

  async stop(): Promise<void> {
    if (this.heartbeatTimer !== null) {
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = null;
    }
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        ws.once('close', () => resolve());
        ws.close();
      });
    }
    this.failPending(new Error('reactor stopped'));
  }

  // Register packet handler
  register<T>(group: string, element: string, handler: (data: T) => Promise<unknown>): void {
    const key = `${group}:${element}`;
    this.handlers.set(key, { handler, group, element });
  }

  // Submit packet for processing (an `id` may be given; the spec always makes one)
  async submit(packet: SubmitPacket): Promise<Result> {
    const fullPacket: Packet = {
      version: "1.0",
      id: randomUUID(),
      ...packet
    };

    return this.sendMessage('submit', fullPacket);
  }

  // Send a heartbeat and wait for the node's heartbeat with the same seq.
  heartbeat(): Promise<Message> {
    return new Promise((resolve, reject) => {
      const seq = this.sendHeartbeat();
      if (seq === null) {
        reject(new Error('not connected'));
        return;
      }
      this.track(this.heartbeats, seq, resolve, reject);
    });
  }

  private track(map: Map<number, PendingRequest>, seq: number,
                resolve: (value: any) => void, reject: (reason: unknown) => void): void {
    // Timeout handling
    const timer = setTimeout(() => {
      if (map.delete(seq)) {
        reject(new Error(`Timeout waiting for response to seq ${seq}`));
      }
    }, this.config.requestTimeoutMs ?? 30000);
    map.set(seq, { resolve, reject, timestamp: Date.now(), timer });
  }

  private async sendMessage(type: Message['type'], payload: unknown): Promise<Result> {
    const seq = ++this.sequence;
    const message: Message = { type, seq, payload };

    return new Promise((resolve, reject) => {
      if (this.ws?.readyState !== WebSocket.OPEN) {
        reject(new Error('not connected'));
        return;
      }
      this.track(this.pending, seq, resolve, reject);
      this.ws.send(JSON.stringify(message));
    });
  }

  private handleMessage(data: Buffer): void {
    try {
      const message: Message = JSON.parse(data.toString());

      switch (message.type) {
        case 'submit':
          this.processPacket(message.payload as Packet);
          break;
        case 'result':
          this.handleResult(message.seq, message.payload as Result);
          break;
        case 'error':
          this.handleError(message.seq, message.payload as ErrorPayload);
          break;
        case 'heartbeat':
          this.handleHeartbeat(message);
          break;
      }
    } catch (error) {
      console.error('Failed to handle message:', error);
    }
  }

  private async processPacket(packet: Packet): Promise<void> {
    const key = `${packet.group}:${packet.element}`;
    const handler = this.handlers.get(key);

    if (!handler) {
      this.sendError(packet.id, 'PF001', `No handler for ${key}`);
      return;
    }

    const startTime = Date.now();
    try {
      const result = await handler.handler(packet.data);
      const duration_ms = Date.now() - startTime;

      this.sendResult({
        packet_id: packet.id,
        status: 'success',
        data: result,
        duration_ms
      });
    } catch (error) {
      const duration_ms = Date.now() - startTime;
      this.sendResult({
        packet_id: packet.id,
        status: 'error',
        error: {
          code: 'PF500',
          message: error instanceof Error ? error.message : 'Unknown error'
        },
        duration_ms
      });
    }
  }

  private sendResult(result: Result): void {
    const message: Message = {
      type: 'result',
      seq: 0, // Results don't need sequence numbers
      payload: result
    };
    this.ws?.send(JSON.stringify(message));
  }

  private sendError(packetId: string, code: string, message: string): void {
    this.sendResult({
      packet_id: packetId,
      status: 'error',
      error: { code, message },
      duration_ms: 0
    });
  }

  // Returns the heartbeat's seq, or null when the socket is not open.
  private sendHeartbeat(): number | null {
    if (this.ws?.readyState === WebSocket.OPEN) {
      const message: Message = {
        type: 'heartbeat',
        seq: ++this.sequence,
        payload: { timestamp: Date.now() }
      };
      this.ws.send(JSON.stringify(message));
      return message.seq;
    }
    return null;
  }

  private settle(map: Map<number, PendingRequest>, seq: number): PendingRequest | undefined {
    const pending = map.get(seq);
    if (pending) {
      map.delete(seq);
      clearTimeout(pending.timer);
    }
    return pending;
  }

  private handleResult(seq: number, result: Result): void {
    this.settle(this.pending, seq)?.resolve(result);
  }

  private handleError(seq: number, error: ErrorPayload): void {
    this.settle(this.pending, seq)?.reject(new PacketFlowError(seq, error));
  }

  private handleHeartbeat(message: Message): void {
    this.config.onHeartbeat?.(message);
    this.settle(this.heartbeats, message.seq)?.resolve(message);
  }

  private failPending(reason: Error): void {
    for (const map of [this.pending, this.heartbeats]) {
      for (const seq of [...map.keys()]) {
        this.settle(map, seq)?.reject(reason);
      }
    }
  }
}
