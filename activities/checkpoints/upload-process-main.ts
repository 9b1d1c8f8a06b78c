/**
 * Entry point of the checkpoint upload process (see ./upload-process.ts):
 * reads one {@link UploadJob} JSON line on stdin, uploads its files, writes
 * JSON lines on stdout and exits 0, or 1 after an `error` line. Exits at once
 * when stdin closes before the job is done (the worker is gone).
 *
 *   node dist/activities/checkpoints/upload-process-main.js [--normal-priority] < job.json
 */
import { createInterface } from 'node:readline';
import { lowerAutogroupPriority, runUploadJob, type UploadJob, type UploadMessage } from './upload-process.js';

const emit = (m: UploadMessage) => process.stdout.write(`${JSON.stringify(m)}\n`);

if (!process.argv.includes('--normal-priority')) lowerAutogroupPriority();

let started = false;
const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (started) return;
  started = true;
  let job: UploadJob;
  try {
    job = JSON.parse(line) as UploadJob;
  } catch (err) {
    emit({ event: 'error', message: `checkpoint upload process: stdin is not a JSON job (${(err as Error).message})` });
    process.exit(1);
  }
  runUploadJob(job, emit).then(
    () => process.exit(0),
    (err: unknown) => {
      const e = err as { message?: string; code?: string; name?: string };
      emit({ event: 'error', message: e?.message ?? String(err), code: typeof e?.code === 'string' ? e.code : undefined, name: e?.name });
      process.exit(1);
    },
  );
});
// The worker closed our stdin (it exited or was killed): nobody will write the manifest, so stop sending.
input.on('close', () => process.exit(started ? 2 : 1));
