// Running a KVM guest: a real VM whose memory slots follow the manager's regions, and a vCPU
// running 64-bit guest code that writes guest RAM. Needs /dev/kvm (KvmError ERR_KVM_UNAVAILABLE
// without it).
import assert from 'node:assert/strict';
import { GuestMemoryBuilder, KvmPartition, MemoryLayout, VcpuMode, Vtl, guestPrograms, range, GiB } from 'membacking';

const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]));
const memory = await manager.client().guestMemory();
const kvm = await KvmPartition.create();
await manager.attachPartition(Vtl.Vtl0, kvm);         // memory slots follow the manager's regions
const programs = guestPrograms();
memory.writeAt(0x10000, programs.fillPattern);        // 64-bit CPL3 code: fill rcx qwords at rdi
const vcpu = await kvm.createVcpu({ mode: VcpuMode.Long, pageTables: range(0x200000, 0x600000) });
vcpu.setRegisters({ rip: 0x10000n, rdi: 0x1000000n, rcx: 512n, rdx: 0x5an, rsp: 0x8000n });
const exit = await vcpu.run({ timeoutMs: 5000 });
assert.equal(exit.kind, 'IoOut');
assert.equal(exit.port, programs.donePort);
assert.equal(memory.readU64(0x1000000), 0x1000000n ^ 0x5an); // written by the guest
assert.equal(memory.readU64(0x1000000 + 511 * 8), (0x1000000n + 511n * 8n) ^ 0x5an);
assert.ok(kvm.inspect().slots.length > 0);            // the slot table
vcpu.close();
kvm.close();
await manager.close();
