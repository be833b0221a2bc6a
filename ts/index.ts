/**
 * membacking: a virtual-machine guest-memory system for Node.js, with a Rust core.
 *
 * This entry point is the public API (see api.md): ranges and range algorithms, guest memory
 * layouts, the chunked memory registrar, and the error classes. Units are bytes unless a name
 * says pages; u64 inputs take `number | bigint`, u64 outputs are `bigint`.
 */
export { KiB, MiB, GiB, TiB, type U64 } from './u64';
export {
  MemoryRange,
  AlignedSubranges,
  RangeWalkKind,
  range,
  walkRanges,
  overlappingRanges,
  subtractRanges,
  flattenRanges,
  mergeAdjacentRanges,
  type RangeLike,
  type Tagged,
  type RangeWalkItem,
} from './range';
export { AddressType, MemoryLayout, x86LegacyRamRanges, type MemoryRangeWithNode } from './layout';
export { MemoryRegistrar, type RegisterMemory } from './registrar';
export {
  initialize,
  handlerStatus,
  SparseMapping,
  Mappable,
  GuestMemory,
  LockedPages,
  __test,
  __bench,
  type TransferHandle,
  type PageFaultHandler,
  type GuestMemoryOptions,
  type PagedRange,
  type ShareableRegion,
} from './guest_memory';
export {
  GuestMemoryBuilder,
  GuestMemoryManager,
  GuestMemoryClient,
  SharedMemoryBacking,
  RamVisibilityControl,
  DeviceMemoryMapper,
  DeviceMemoryRegion,
  DeviceMemoryControl,
  Vtl,
  RamVisibility,
  MemoryBuildError,
  PartitionAttachError,
  PartitionMapperError,
  VaMapperError,
  MemoryManagerError,
  type ManagerSnapshot,
} from './manager';
export { type FlatEntry, type PlannedOp, type PlanChange } from './planner';
export {
  RecordingPartition,
  KvmPartition,
  Vcpu,
  VcpuMode,
  KvmError,
  guestPrograms,
  type GuestPrograms,
  type RecordedCall,
  type VcpuOptions,
  type VcpuRegisters,
  type VcpuExit,
} from './partition';
export {
  MembackingError,
  SparseMappingError,
  GuestMemoryError,
  GuestMemoryErrorKind,
  type FaultInfo,
  InvalidMemoryRangeError,
  MemoryLayoutError,
  RegistrarError,
  OsError,
  type ErrorCode,
} from './errors';
