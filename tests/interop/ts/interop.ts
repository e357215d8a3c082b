// Interop driver: runs the PacketFlow v1.0 spec's examples through the spec's TypeScript reactor
// against a running node.
//   node dist/interop.js ws://127.0.0.1:PORT/packetflow/v1           the examples (checks below)
//   node dist/interop.js ws://127.0.0.1:PORT/packetflow/v1 --usage   only the spec's usage example,
//       with df:transform registered on this reactor: for a node with NO df:transform handler,
//       which must route the packet back to this reactor (hub routing) and relay its answer.
//   node dist/interop.js ws://127.0.0.1:PORT/packetflow/v1 --process-data   only the client side
//       of the spec's "TypeScript -> Elixir" example, df:process_data, which this reactor does not
//       run: for a node without it while a spec Elixir reactor that runs it is connected (the node,
//       a hub, must ask that reactor although it never said what it runs).
// Prints one JSON line per check, {"name", "ok", "detail"}, and exits 1 if any check failed
// (2 on a usage error or when the whole run overran its deadline).
// (serve.ts is the other mode: a long-running peer with handlers, for Python clients to reach.)
import { randomUUID } from 'crypto';
import { Message, PacketFlowError, PacketFlowReactor, Result } from './reactor.js';

const CHECK_TIMEOUT_MS = 15000;
const RUN_TIMEOUT_MS = 50000;

const endpoint = process.argv[2];
const mode = process.argv[3] ?? '--examples';
if (!endpoint || !['--examples', '--usage', '--process-data'].includes(mode) || process.argv.length > 4) {
  console.error('usage: node dist/interop.js ws://HOST:PORT/packetflow/v1 [--usage|--process-data]');
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error(`interop: run exceeded ${RUN_TIMEOUT_MS} ms`);
  process.exit(2);
}, RUN_TIMEOUT_MS);
watchdog.unref();

let failures = 0;

function report(name: string, ok: boolean, detail: unknown): void {
  if (!ok) failures++;
  console.log(JSON.stringify({ name, ok, detail }));
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Runs one check; `body` returns [ok, detail] or throws (a failure with the error as detail).
async function check(name: string, body: () => Promise<[boolean, unknown]>): Promise<void> {
  try {
    const [ok, detail] = await withTimeout(body(), CHECK_TIMEOUT_MS, name);
    report(name, ok, detail);
  } catch (error) {
    const detail = error instanceof PacketFlowError
      ? { thrown: error.message, code: error.code, seq: error.seq }
      : { thrown: error instanceof Error ? error.message : String(error) };
    report(name, false, detail);
  }
}

// Starts the reactor and reports the 'connect' check; false when it could not connect.
async function connect(reactor: PacketFlowReactor): Promise<boolean> {
  try {
    await withTimeout(reactor.start(), CHECK_TIMEOUT_MS, 'connect');
    report('connect', true, { endpoint });
    return true;
  } catch (error) {
    report('connect', false, { endpoint, thrown: error instanceof Error ? error.message : String(error) });
    return false;
  }
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function expectSuccess(result: Result, id: string, data: unknown): [boolean, unknown] {
  const ok = result.status === 'success' && result.packet_id === id && deepEqual(result.data, data);
  return [ok, { expected: { packet_id: id, status: 'success', data }, got: result }];
}

// The spec's usage example, in the spec's order: register df:transform, start, submit
// "hello world". Run against a node without df:transform: the node forwards the packet to this
// very reactor, whose handler answers (result seq 0, correlated by packet id), and the node relays
// that answer to this reactor's submit (with the submit's seq).
async function usage(): Promise<void> {
  const reactor = new PacketFlowReactor({ endpoint });
  const calls: unknown[] = [];

  // Register a data transformer
  reactor.register('df', 'transform', async (data: string) => {
    calls.push(data);
    return data.toUpperCase();
  });

  if (!(await connect(reactor))) return;

  await check('usage', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'df', element: 'transform', data: 'hello world', priority: 5 });
    const [ok, detail] = expectSuccess(result, id, 'HELLO WORLD');
    // the answer must come from this reactor's handler, run once, not from a node handler
    const ranHere = calls.length === 1 && calls[0] === 'hello world';
    return [ok && ranHere, { ...(detail as object), handler_calls: calls }];
  });

  await reactor.stop();
}

// The spec's "TypeScript -> Elixir" example, the TypeScript client as written (with a known id).
// This reactor registers nothing: the answer must come from the Elixir reactor, through the node.
async function processData(): Promise<void> {
  const reactor = new PacketFlowReactor({ endpoint });
  if (!(await connect(reactor))) return;

  await check('ts_to_elixir', async () => {
    const id = randomUUID();
    const result = await reactor.submit({
      id, group: 'df', element: 'process_data', data: { items: [1, 2, 3, 4, 5] }, priority: 7,
    });
    return expectSuccess(result, id, 30);
  });

  await reactor.stop();
}

async function main(): Promise<void> {
  if (mode === '--usage') {
    await usage();
    return;
  }
  if (mode === '--process-data') {
    await processData();
    return;
  }
  const heartbeatsSeen: Message[] = [];
  const reactor = new PacketFlowReactor({
    endpoint,
    onHeartbeat: (message) => heartbeatsSeen.push(message),
  });

  if (!(await connect(reactor))) return;

  // The spec's usage example: df:transform "hello world" -> "HELLO WORLD".
  await check('transform', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'df', element: 'transform', data: 'hello world', priority: 5 });
    return expectSuccess(result, id, 'HELLO WORLD');
  });

  // Quick start: df:uppercase.
  await check('uppercase', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'df', element: 'uppercase', data: 'packetflow', priority: 5 });
    return expectSuccess(result, id, 'PACKETFLOW');
  });

  // TypeScript -> node interop example: df:process_data {items:[1..5]} priority 7 -> 30.
  await check('process_data', async () => {
    const id = randomUUID();
    const result = await reactor.submit({
      id, group: 'df', element: 'process_data', data: { items: [1, 2, 3, 4, 5] }, priority: 7,
    });
    return expectSuccess(result, id, 30);
  });

  // Quick start: cf:validate.
  await check('validate_null', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'cf', element: 'validate', data: null, priority: 5 });
    return expectSuccess(result, id, { valid: false });
  });
  await check('validate_value', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'cf', element: 'validate', data: 'x', priority: 5 });
    return expectSuccess(result, id, { valid: true });
  });

  // A packet the node accepted but has no handler for: the node forwards it to its connected
  // reactors (this one included, which answers PF001 as the spec's processPacket does); none can
  // run it, so the result is status error, PF001 (no handler, here or on any reactor).
  await check('unknown_element', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'df', element: 'no_such_element', data: 1, priority: 5 });
    const ok = result.status === 'error' && result.packet_id === id && result.error?.code === 'PF001';
    return [ok, { expected: { packet_id: id, status: 'error', code: 'PF001' }, got: result }];
  });

  // 200 submits in flight at once: each promise must get its own packet's answer (seq matching).
  await check('concurrent_200', async () => {
    const sent = Array.from({ length: 200 }, (_, i) => ({ id: randomUUID(), text: `packet ${i} ${randomUUID()}` }));
    const results = await Promise.all(sent.map(({ id, text }, i) =>
      reactor.submit({ id, group: 'df', element: 'transform', data: text, priority: 1 + (i % 10) })));
    const wrong = results
      .map((result, i) => ({ i, result, expected: { packet_id: sent[i].id, data: sent[i].text.toUpperCase() } }))
      .filter(({ result, expected }) => result.status !== 'success'
        || result.packet_id !== expected.packet_id || result.data !== expected.data);
    return [wrong.length === 0, { count: results.length, mismatched: wrong.length, first_mismatches: wrong.slice(0, 3) }];
  });

  // An invalid packet (priority out of 1-10): an `error` frame with the submit's seq, PF002,
  // so the reactor's submit rejects.
  await check('invalid_priority', async () => {
    const id = randomUUID();
    try {
      const result = await reactor.submit({ id, group: 'df', element: 'transform', data: 'x', priority: 11 });
      return [false, { expected: 'an error frame (PF002)', got: result }];
    } catch (error) {
      if (!(error instanceof PacketFlowError)) throw error;
      const ok = error.code === 'PF002';
      return [ok, { code: error.code, message: error.message, packet_id: error.packet_id, seq: error.seq }];
    }
  });

  // One bad message must not cost the connection.
  await check('open_after_error', async () => {
    const id = randomUUID();
    const result = await reactor.submit({ id, group: 'df', element: 'uppercase', data: 'still here', priority: 5 });
    return expectSuccess(result, id, 'STILL HERE');
  });

  // The heartbeat the reactor sends on open is answered with a heartbeat of the same seq.
  await check('heartbeat_on_open', async () => {
    const seq = reactor.openHeartbeatSeq;
    const answer = heartbeatsSeen.find((message) => message.seq === seq);
    const ok = seq !== null && answer !== undefined;
    return [ok, { sent_seq: seq, answer: answer ?? null, heartbeats_seen: heartbeatsSeen.length }];
  });

  // A heartbeat sent later (seq well past the node's own heartbeat counter) is echoed too.
  await check('heartbeat', async () => {
    const answer = await reactor.heartbeat();
    const payload = answer.payload as { timestamp?: unknown } | null;
    const ok = answer.type === 'heartbeat' && typeof payload?.timestamp === 'number';
    return [ok, { answer }];
  });

  await reactor.stop();
}

main()
  .catch((error) => report('driver', false, { thrown: error instanceof Error ? error.stack : String(error) }))
  .finally(() => {
    console.error(`interop: ${failures === 0 ? 'all checks passed' : `${failures} check(s) failed`}`);
    process.exitCode = failures === 0 ? 0 : 1;
  });
