// Helpers of the migration tests: connected stream pairs (a Unix socket pair through a server,
// an in-process duplex pair) and a relay between a source and a destination that lets a test
// act at a chosen point of the stream (write guest memory, change visibility, flip a bit,
// cut the connection) before it forwards a chunk, so what happens "during the rounds" is
// decided by the test, not by timing.
'use strict';
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { duplexPair } = require('node:stream');

/** Two connected Unix stream sockets (destroyed when the test `t` ends, if given; the benchmarks use it too). */
async function socketPair(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-mig-'));
  const address = path.join(dir, 'socket');
  const server = net.createServer();
  await new Promise((resolve) => server.listen(address, resolve));
  const accepted = new Promise((resolve) => server.once('connection', resolve));
  const client = net.connect(address);
  await new Promise((resolve) => client.once('connect', resolve));
  const other = await accepted;
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
  t?.teardown(() => {
    client.destroy();
    other.destroy();
  });
  return [client, other];
}

/**
 * A source end and a destination end joined by a relay. `onSourceChunk(chunk, index)` runs
 * (and is awaited) before each chunk from the source is forwarded; it may return a replacement
 * chunk, or `null` to drop it. `cut()` resets the connection.
 */
function relayed(t, onSourceChunk = () => undefined) {
  const [source, sourceRelay] = duplexPair();
  const [destination, destinationRelay] = duplexPair();
  let index = 0;
  let queue = Promise.resolve();
  sourceRelay.on('data', (chunk) => {
    const i = index++;
    sourceRelay.pause();
    queue = queue.then(async () => {
      const replaced = await onSourceChunk(chunk, i);
      const out = replaced === undefined ? chunk : replaced;
      if (out !== null && !destinationRelay.destroyed) destinationRelay.write(out);
      sourceRelay.resume();
    });
  });
  sourceRelay.on('end', () => queue.then(() => destinationRelay.end()));
  destinationRelay.on('data', (chunk) => {
    if (!sourceRelay.destroyed) sourceRelay.write(chunk);
  });
  destinationRelay.on('end', () => sourceRelay.end());
  // A cut connection as sockets see it: each end fails with a reset (a duplex pair does not
  // tell the other side when one side is destroyed).
  const cut = () => {
    sourceRelay.destroy();
    destinationRelay.destroy();
    for (const end of [source, destination]) end.destroy(Object.assign(new Error('connection reset by the relay'), { code: 'ECONNRESET' }));
  };
  t.teardown(() => {
    for (const s of [source, sourceRelay, destination, destinationRelay]) s.destroy();
  });
  return { source, destination, cut };
}

/** Open file descriptors of this process that are memfds (guest RAM, device objects). */
function memfds() {
  let count = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:')) count++;
    } catch {
      // Closed while listing (the listing's own descriptor).
    }
  }
  return count;
}

module.exports = { socketPair, relayed, memfds };
