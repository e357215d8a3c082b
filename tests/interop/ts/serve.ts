// Serve mode: the spec's TypeScript reactor as a handler peer of a node (hub routing).
//   node dist/serve.js ws://127.0.0.1:PORT/packetflow/v1
// Registers the handlers below, connects, prints {"ready": true} once the WebSocket is open,
// then answers the packets the node forwards to it until it is killed (SIGTERM/SIGINT) or its
// standard input ends; it exits 3 if the node closes the link. Stdout carries one JSON line per
// event, for tests/test_interop_ts.py to wait on:
//   {"ready": true, "endpoint": ...}                   connected (or {"ready": false, "error"})
//   {"event": "start", "key": "df:ts_slow", "data": ...} a handler began running a packet
//   {"event": "end", "key": ..., "ok": true|false}       it returned (true) or threw (false)
//   {"closed": true, "code": N, "reason": ...}           the link closed under us
import { PacketFlowReactor } from './reactor.js';

const CONNECT_TIMEOUT_MS = 15000;

const endpoint = process.argv[2];
if (!endpoint) {
  console.error('usage: node dist/serve.js ws://HOST:PORT/packetflow/v1');
  process.exit(2);
}

function emit(record: Record<string, unknown>): void {
  console.log(JSON.stringify(record));
}

let stopping = false;

const reactor = new PacketFlowReactor({
  endpoint,
  onClose: (code, reason) => {
    if (stopping) return;
    emit({ closed: true, code, reason });
    process.exit(3);
  },
});

// register() with an event line before and after each run, so a test can tell that a packet
// reached this process (and when) without looking inside the node.
function serve<T>(group: string, element: string, handler: (data: T) => Promise<unknown>): void {
  const key = `${group}:${element}`;
  reactor.register<T>(group, element, async (data: T) => {
    emit({ event: 'start', key, data });
    try {
      const value = await handler(data);
      emit({ event: 'end', key, ok: true });
      return value;
    } catch (error) {
      emit({ event: 'end', key, ok: false, error: error instanceof Error ? error.message : String(error) });
      throw error;
    }
  });
}

// Stands in for the spec's sendPushNotifications: there is nobody to notify in a test.
async function sendPushNotifications(message: string): Promise<void> {
  void message;
}

// The spec's "Elixir -> TypeScript" interop example (with the message echoed back).
serve('ed', 'notify_users', async (data: { message: string }) => {
  await sendPushNotifications(data.message);
  return { sent: true, message: data.message, timestamp: Date.now() };
});

// {items: [1, 2, 3]} -> [2, 4, 6]
serve('df', 'ts_double', async (data: { items: number[] }) => data.items.map((x) => x * 2));

// Always throws: the node must relay the reactor's PF500 and its message.
serve('df', 'ts_boom', async () => {
  throw new Error('ts boom');
});

// Waits `data` milliseconds, then answers "slept" (for disconnect and deadline tests).
serve('df', 'ts_slow', async (data: number) => {
  await new Promise((resolve) => setTimeout(resolve, Number(data)));
  return 'slept';
});

async function shutdown(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  const force = setTimeout(() => process.exit(code), 2000);
  force.unref();
  try {
    await reactor.stop();
  } finally {
    process.exit(code);
  }
}

async function main(): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      reactor.start(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no connection within ${CONNECT_TIMEOUT_MS} ms`)),
                           CONNECT_TIMEOUT_MS);
      }),
    ]);
  } catch (error) {
    emit({ ready: false, endpoint, error: error instanceof Error ? error.message : String(error) });
    process.exit(2);
  } finally {
    clearTimeout(timer);
  }
  process.on('SIGTERM', () => void shutdown(0));
  process.on('SIGINT', () => void shutdown(0));
  process.stdin.on('end', () => void shutdown(0));
  process.stdin.on('error', () => void shutdown(0));
  process.stdin.resume();

  emit({ ready: true, endpoint });
}

void main();
