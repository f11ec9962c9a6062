export { ContainerRuntime } from './container-runtime.js';
export { VolumeManager } from './volume-manager.js';
export type { ContainerVolumesOptions } from './context.js';
export type { RecoveryReport } from './recover.js';
export type { OciMount } from './export/oci.js';
export {
  HandlerError,
  type CommandHandler,
  type CommandResult,
  type HandlerContext,
  type HandlerFunction,
  type HandlerOptions,
  type HandlerVolume,
} from './handlers/run-handler.js';
export type { BackupManifest, BackupOptions, BackupResult, Progress, RestoreOptions } from './handlers/backup.js';
export { BindMounter, type BindMounterOptions } from './mounter/bind.js';
export type { MountEngine } from './mounter/engine-choice.js';
export { FakeMounter, type FakeFailure, type FakeMounterCall } from './mounter/fake.js';
export type { Mounter, MountRequest, MountTarget, MountedVolume } from './mounter/mounter.js';
export { ContainerVolumesError, MountCommandError, type ErrorCode } from './errors.js';
export type {
  ContainerInfo,
  CreateContainerSpec,
  CreateVolumesOptions,
  DiskUsage,
  DiskUsageOptions,
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
