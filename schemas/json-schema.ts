/**
 * JSON Schema of pipeline specs, generated from the zod schema so the two can
 * never disagree. Committed as schemas/pipeline.schema.json for editors; a
 * test fails when the committed copy drifts.
 */
import { z } from 'zod';
import { PipelineSpecSchema, PipelineRunInputSchema } from './pipeline.js';
import { StageEventSchema } from './stage-events.js';

/** JSON Schema (draft 2020-12) of a pipeline spec file. */
export function pipelineJsonSchema(): Record<string, unknown> {
  return {
    title: 'tanren pipeline',
    ...z.toJSONSchema(PipelineSpecSchema, { io: 'input', unrepresentable: 'any' }),
  };
}

/** JSON Schema of the workflow input (`tanren render` output). */
export function runInputJsonSchema(): Record<string, unknown> {
  return { title: 'tanren pipelineWorkflow input', ...z.toJSONSchema(PipelineRunInputSchema, { io: 'input', unrepresentable: 'any' }) };
}

/** JSON Schema of one line of a stage's events file (docs/stage-protocol.md). */
export function stageEventJsonSchema(): Record<string, unknown> {
  return { title: 'tanren stage event', ...z.toJSONSchema(StageEventSchema, { io: 'input', unrepresentable: 'any' }) };
}

/** The committed file's text for a schema. */
export function schemaFileText(schema: Record<string, unknown>): string {
  return `${JSON.stringify(schema, null, 2)}\n`;
}
