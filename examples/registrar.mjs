// The memory registrar: RAM registered lazily in 2 GiB chunks through a callback; a chunk is
// registered once, and a failure sticks to its chunk.
import assert from 'node:assert/strict';
import { MemoryLayout, MemoryRegistrar, RegistrarError, range, GiB } from 'membacking';

const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
const registered = [];
const registrar = new MemoryRegistrar(layout, 1n << 40n, async (piece) => { registered.push(String(piece)); });
await registrar.register(0x1000, 0x1000);         // a Promise because the callback is async
assert.equal(registrar.register(0x2000, 0x1000), undefined); // the chunk is registered: lock-free fast path
assert.deepEqual(registered, ['0x10000000000-0x10080000000']); // chunk 0 (2 GiB), shifted by the offset

// A throwing (or rejecting) callback marks its chunk failed, with the error as `cause`.
const failing = new MemoryRegistrar(layout, 0, () => { throw new Error('no room'); });
assert.throws(() => failing.register(0, 0x1000), (err) => err instanceof RegistrarError && err.code === 'ERR_REGISTRATION_FAILED' && err.cause.message === 'no room');
assert.throws(() => failing.register(0x1000, 0x1000), { code: 'ERR_REGISTRATION_FAILED' }); // sticky
