/**
 * The stage protocol's event schema: what the worker accepts from a stage's
 * events file, and that the Python stages' EventWriter writes exactly that
 * (its lines are read back through the same reader the worker uses).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, appendFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkEventLine, StageExitCodeSchema, STAGE_EVENT_KINDS } from '../../schemas/stage-events.js';
import { EXIT_CODE_FAILURES } from '../../schemas/names.js';
import { EventFileReader } from '../../activities/events.js';
import { ROOT, stagesPython } from '../helpers/env.js';

describe('stage event schema', () => {
  it('accepts the events of docs/stage-protocol.md, keeping unknown fields', () => {
    for (const line of [
      '{"event":"progress","step":120,"total":1000}',
      '{"event":"metric","step":120,"values":{"loss":3.82,"lr":0.0006}}',
      '{"event":"metric","values":{"loss":null}}',
      '{"event":"checkpoint","step":100,"path":"step-000100"}',
      '{"event":"artifact","path":"model/config.json","description":"the config"}',
      '{"event":"result","values":{"final_loss":2.91,"notes":["a"]}}',
      '{"event":"error","type":"InvalidStageInput","message":"params.json: field lr must be a number"}',
    ]) {
      const r = checkEventLine(line);
      assert.ok(r.ok, `${line}: ${r.ok ? '' : r.reason}`);
    }
    const kept = checkEventLine('{"event":"progress","step":1,"phase":"warmup"}');
    assert.ok(kept.ok && (kept.event as Record<string, unknown>).phase === 'warmup');
  });

  it('rejects malformed events with the field at fault', () => {
    const cases: Array<[string, RegExp]> = [
      ['not json', /not JSON/],
      ['[1,2]', /no "event" field/],
      ['{"step":1}', /no "event" field/],
      ['{"event":"progress","step":-1}', /invalid "progress" event: step/],
      ['{"event":"progress","step":1.5}', /invalid "progress" event: step/],
      ['{"event":"progress"}', /invalid "progress" event: step/],
      ['{"event":"metric","values":{"loss":"low"}}', /invalid "metric" event: values\.loss/],
      ['{"event":"checkpoint","path":"../../etc"}', /invalid "checkpoint" event: path/],
      ['{"event":"checkpoint","path":"/abs"}', /invalid "checkpoint" event: path/],
      ['{"event":"error","message":"x"}', /invalid "error" event: type/],
    ];
    for (const [line, want] of cases) {
      const r = checkEventLine(line);
      assert.ok(!r.ok, line);
      assert.match(r.reason, want, line);
      assert.equal(r.ignorable, false, line);
    }
    const unknown = checkEventLine('{"event":"telemetry","x":1}');
    assert.ok(!unknown.ok && unknown.ignorable && /unknown event kind "telemetry"/.test(unknown.reason));
  });

  it('lists the same exit codes as the failure mapping', () => {
    const codes = StageExitCodeSchema.options.map((o) => o.value).filter((c) => c !== 0);
    assert.deepEqual(codes.sort(), Object.keys(EXIT_CODE_FAILURES).map(Number).sort());
  });

  it('the worker reader passes valid events and reports bad lines', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tanren-events-'));
    const file = path.join(dir, 'events.jsonl');
    writeFileSync(file, '{"event":"progress","step":1}\n{"event":"progress","step":"x"}\n{"event":"metr');
    const bad: string[] = [];
    const reader = new EventFileReader(file, (_l, why) => bad.push(why));
    assert.deepEqual(
      (await reader.poll()).map((e) => e.event),
      ['progress'],
    );
    assert.equal(bad.length, 1);
    appendFileSync(file, 'ic","values":{"loss":1}}\n');
    assert.deepEqual(
      (await reader.poll()).map((e) => e.event),
      ['metric'],
    );
  });

  it('the Python EventWriter writes only events the schema accepts', () => {
    const python = stagesPython();
    const dir = mkdtempSync(path.join(tmpdir(), 'tanren-events-py-'));
    const file = path.join(dir, 'events.jsonl');
    const program = [
      'import math, os',
      'from tanren_stages.protocol import EventWriter',
      'w = EventWriter(os.environ["OUT"])',
      'w.emit("progress", step=3, total=10, message="warming up")',
      'w.emit("metric", step=3, values={"loss": 2.5, "nan": math.nan, "inf": math.inf})',
      'w.emit("checkpoint", path="step-000003", step=3)',
      'w.emit("artifact", path="model/config.json", description=None)',
      'w.emit("result", values={"tokens": 123, "names": ["a", "b"]})',
      'w.emit("error", type="StageCrashed", message="boom")',
    ].join('\n');
    execFileSync(python, ['-c', program], { env: { ...process.env, OUT: file, PYTHONPATH: path.join(ROOT, 'stages') } });
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    assert.equal(lines.length, 6);
    const kinds = lines.map((l) => {
      const r = checkEventLine(l);
      assert.ok(r.ok, `${l}: ${r.ok ? '' : r.reason}`);
      return r.event.event;
    });
    assert.deepEqual(kinds, ['progress', 'metric', 'checkpoint', 'artifact', 'result', 'error']);
    assert.deepEqual([...STAGE_EVENT_KINDS].sort(), [...new Set(kinds)].sort());
  });
});
