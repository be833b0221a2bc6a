// The child of shared-backing.mjs: guest memory over the RAM memfd it received as fd 3.
import { GuestMemoryBuilder, Mappable, MemoryLayout, SharedMemoryBacking, range, GiB } from 'membacking';

const shared = SharedMemoryBacking.fromMappable(Mappable.fromFd(3));
const manager = await new GuestMemoryBuilder().existingBacking(shared).build(MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]));
const memory = await manager.client().guestMemory();
console.log(`0x${memory.readU64(0x5000).toString(16)}`);
memory.writeU64(0x6000, 0x5678n);
await manager.close();
