/** Writes schemas/pipeline.schema.json and schemas/run-input.schema.json (`npm run schema:export`). */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pipelineJsonSchema, runInputJsonSchema, schemaFileText } from './json-schema.js';

const dir = fileURLToPath(new URL('../../schemas/', import.meta.url));
writeFileSync(`${dir}pipeline.schema.json`, schemaFileText(pipelineJsonSchema()));
writeFileSync(`${dir}run-input.schema.json`, schemaFileText(runInputJsonSchema()));
process.stdout.write(`wrote ${dir}pipeline.schema.json and run-input.schema.json\n`);
