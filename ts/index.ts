/**
 * membacking: a virtual-machine guest-memory system for Node.js, with a Rust core.
 *
 * This entry point is the public API: ranges and range algorithms, guest memory layouts, the
 * chunked memory registrar, fault-safe guest memory, the memory manager and its device
 * windows, partitions, the dry-run planner, dirty tracking, snapshots and restores, live
 * migration, and the error classes. Units are bytes unless a
 * name says pages; u64 inputs take `number | bigint`, u64 outputs are `bigint`. Hooks for tests
 * and benchmarks are not part of the API (`ts/internal.ts` in the repository; `exports`
 * keeps `membacking/dist/…` private).
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
export { AddressType, MemoryLayout, x86LegacyRamRanges, type MemoryLayoutJson, type MemoryRangeWithNode } from './layout';
export { MemoryRegistrar, type RegisterMemory } from './registrar';
export {
  initialize,
  handlerStatus,
  SparseMapping,
  Mappable,
  GuestMemory,
  LockedPages,
  type TransferHandle,
  type IssuedTransferHandle,
  type PageFaultHandler,
  type GuestMemoryOptions,
  type PagedRange,
  type ShareableRegion,
  type VectoredEntry,
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
  type ManagerSnapshot,
  type RestoredWindow,
  type PrefetchFailure,
  type PrefetchProgressCallback,
} from './manager';
export {
  DirtyTracking,
  LazyRestore,
  readSnapshot,
  verifySnapshot,
  snapshotSupport,
  type SnapshotInfo,
  type SnapshotOptions,
  type SnapshotManifest,
  type SnapshotChain,
  type SnapshotSupport,
  type RestoreMode,
  type RestoreOptions,
  type RestoreInfo,
  type WindowBacking,
  type DeviceWindowRecord,
  type DeviceWindowMapping,
  type LazyRestoreStats,
  type ProgressCallback,
} from './snapshot';
export { type FlatEntry, type Plan, type PlanChange, type PlannedOp, type PlanPreview } from './planner';
export {
  type MigrateOptions,
  type MigrateFromOptions,
  type MigrationInfo,
  type MigratedFrom,
  type MigrationProgressCallback,
  type MigrationStream,
} from './migration';
export {
  RecordingPartition,
  KvmPartition,
  Vcpu,
  VcpuMode,
  guestPrograms,
  type GuestPrograms,
  type KvmSlotLogEntry,
  type RecordedCall,
  type VcpuOptions,
  type VcpuRegisters,
  type VcpuRegistersInput,
  type VcpuExit,
} from './partition';
export {
  MembackingError,
  InvalidMemoryRangeError,
  MemoryLayoutError,
  RegistrarError,
  OsError,
  SparseMappingError,
  GuestMemoryError,
  GuestMemoryErrorKind,
  MemoryBuildError,
  PartitionAttachError,
  PartitionMapperError,
  VaMapperError,
  MemoryManagerError,
  KvmError,
  SnapshotError,
  MigrationError,
  ERROR_CODES,
  type ErrorCode,
  type ErrnoName,
  type FaultInfo,
} from './errors';
export type { HandlerStatus, RecordedOp, PlannedOpKind, CancelReason, SlotOp, FaultSignal } from './generated/enums';
