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
 * Forwards what `from` receives to `to`, ending `to` after it. With `onChunk(chunk, index)`,
 * each chunk waits for it (in order, `from` paused meanwhile) and is replaced by what it
 * returns, or dropped for `null`; without, chunks pass straight through.
 */
function forward(from, to, onChunk) {
  let index = 0;
  let queue = Promise.resolve();
  from.on('data', (chunk) => {
    if (onChunk === undefined) {
      if (!to.destroyed) to.write(chunk);
      return;
    }
    const i = index++;
    from.pause();
    queue = queue.then(async () => {
      const replaced = await onChunk(chunk, i);
      const out = replaced === undefined ? chunk : replaced;
      if (out !== null && !to.destroyed) to.write(out);
      from.resume();
    });
  });
  from.on('end', () => queue.then(() => to.end()));
}

/**
 * A source end and a destination end joined by a relay. `onSourceChunk(chunk, index)` runs
 * (and is awaited) before each chunk from the source is forwarded; it may return a replacement
 * chunk, or `null` to drop it; `onDestinationChunk` does the same for the other direction.
 * `cut()` resets the connection.
 */
function relayed(t, onSourceChunk = () => undefined, { onDestinationChunk } = {}) {
  const [source, sourceRelay] = duplexPair();
  const [destination, destinationRelay] = duplexPair();
  forward(sourceRelay, destinationRelay, onSourceChunk);
  forward(destinationRelay, sourceRelay, onDestinationChunk);
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

/**
 * A link of at most `bytesPerSecond` for `relayed`'s `onSourceChunk`: each chunk waits its
 * share of time before it is forwarded, so a round of N bytes takes at least N / rate (the
 * bandwidth the source measures cannot exceed the rate, however loaded the machine).
 * `before(chunk, index)` runs first (a guest writing while the link drains).
 */
function throttled(bytesPerSecond, before = () => undefined) {
  return async (chunk, index) => {
    const replaced = await before(chunk, index);
    await new Promise((resolve) => setTimeout(resolve, Math.ceil((chunk.length / bytesPerSecond) * 1000)));
    return replaced;
  };
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32C (Castagnoli) of `bytes`, as the wire format checksums frames. */
function crc32c(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC32C_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** Frame types of the wire format (docs/migration.md) that the tests rewrite. */
const HELLO = 1;
const HELLO_ACK = 2;

/**
 * `chunk` (which starts with a `Hello` or `HelloAck` frame of type `type`) with the frame's
 * protocol version replaced by `version` and its payload checksum recomputed, so the peer
 * reads a well-formed handshake of another version. Throws if the chunk does not start so.
 */
function withVersion(chunk, type, version) {
  const HEADER = 12;
  const LEN = 24;
  if (chunk.length < HEADER + LEN + 4 || chunk.readUInt32LE(0) !== type || chunk.readUInt32LE(4) !== LEN || chunk.toString('latin1', HEADER, HEADER + 8) !== 'MBMIGRAT') {
    throw new Error(`the chunk does not start with a handshake frame of type ${type}: ${chunk.subarray(0, 40).toString('hex')}`);
  }
  const copy = Buffer.from(chunk);
  copy.writeUInt32LE(version, HEADER + 8);
  copy.writeUInt32LE(crc32c(copy.subarray(HEADER, HEADER + LEN)), HEADER + LEN);
  return copy;
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

module.exports = { socketPair, relayed, throttled, withVersion, crc32c, HELLO, HELLO_ACK, memfds };
