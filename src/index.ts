export { ContainerRuntime } from './container-runtime.js';
export { VolumeManager } from './volume-manager.js';
export type { ContainerVolumesOptions } from './context.js';
export type { RecoveryReport } from './operations/recover.js';
export type { OciMount } from './export/oci.js';
export type { CommandHandler, CommandResult, HandlerContext, HandlerFunction, HandlerOptions } from './handlers/run-handler.js';
export { HandlerError } from './handlers/handler-error.js';
export type { HandlerVolume } from './handlers/handler-container.js';
export type { BackupManifest } from './handlers/archive-format.js';
export type { BackupResult } from './handlers/backup.js';
export type { SyncOptions, SyncResult } from './handlers/sync.js';
export type { RsyncStats } from './handlers/rsync.js';
export type { BackupOptions, Progress, RestoreOptions } from './handlers/transfer-options.js';
export { BindMounter, type BindMounterOptions } from './mounter/bind.js';
export type { MountEngine } from './mounter/engine-choice.js';
export { FakeMounter, type FakeFailure, type FakeMounterCall, type FakeMounterOptions } from './mounter/fake.js';
export type { AttachRequest, AttachTarget, Mounter, MountRequest, MountTarget, MountedVolume } from './mounter/mounter.js';
export { ContainerVolumesError, MountCommandError, type ErrorCode } from './errors.js';
export type {
  AttachOptions,
  AttachResult,
  ContainerInfo,
  CreateContainerSpec,
  CreateVolumesOptions,
  DetachOptions,
  DetachResult,
  DiskUsage,
  DiskUsageOptions,
  IdMap,
  IdMapping,
  Mode,
  Origin,
  PruneOptions,
  PruneResult,
  RemoveContainerOptions,
  ShareOptions,
  VolumeInfo,
  VolumeMount,
  VolumeUse,
} from './types.js';
