/** Workflow entry point bundled by the worker. */
export { pipelineWorkflow, statusQuery, pauseSignal, resumeSignal, stageProgressSignal } from './pipeline.js';
export type { RunStatus, StageStatus, RunResult } from './pipeline.js';
