/** Writes schemas/pipeline.schema.json, run-input.schema.json and stage-event.schema.json (`npm run schema:export`). */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pipelineJsonSchema, runInputJsonSchema, schemaFileText, stageEventJsonSchema } from './json-schema.js';

const dir = fileURLToPath(new URL('../../schemas/', import.meta.url));
writeFileSync(`${dir}pipeline.schema.json`, schemaFileText(pipelineJsonSchema()));
writeFileSync(`${dir}run-input.schema.json`, schemaFileText(runInputJsonSchema()));
writeFileSync(`${dir}stage-event.schema.json`, schemaFileText(stageEventJsonSchema()));
process.stdout.write(`wrote ${dir}pipeline.schema.json, run-input.schema.json and stage-event.schema.json\n`);
