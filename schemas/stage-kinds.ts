/**
 * The built-in stage kinds (`uses:`): which Python module runs each one and
 * which queue it goes to unless the stage says otherwise. Pure data.
 */

/** A built-in stage kind. */
export interface StageKindInfo {
  /** Python module under stages/ (run as `python -m tanren_stages.<module>`), or for Node kinds the compiled script under dist/ (stages/report/main.js). */
  readonly module: string;
  /** Which runtime runs the program. @default 'python' */
  readonly runtime?: 'python' | 'node';
  /** Queue used when the stage names none. */
  readonly defaultQueue: 'cpu' | 'gpu';
  /** One line for `tanren validate` and the docs. */
  readonly summary: string;
  /** Default `stallTimeout`: how long the kind may report no progress once it has reported some. */
  readonly stallTimeout?: string;
  /** The workflow hands the stage the run's stage timeline (`with.timeline`) unless the spec sets one. @default false */
  readonly receivesTimeline?: boolean;
  /** The stage writes the run's report (`report.html`): the run's details link to it once it succeeds. @default false */
  readonly writesRunReport?: boolean;
  /** Hyperparameters a `sweep:` may vary even when `with:` does not set them (the program's defaults). */
  readonly sweepable?: readonly string[];
  /** The program honours `stop_at_step` (checkpoint there and exit 0), so an `asha` sweep can pause it at a rung. */
  readonly stopsAtStep?: boolean;
}

const TRAINER_HYPERPARAMETERS = [
  'lr',
  'weight_decay',
  'micro_batch_size',
  'gradient_accumulation_steps',
  'seed',
  'adam_beta1',
  'adam_beta2',
  'grad_clip',
] as const;

/** The kinds themselves; read them through {@link STAGE_KINDS}. */
const KINDS = {
  preflight: { module: 'preflight', defaultQueue: 'gpu', summary: 'check Python, packages, torch, CUDA, bf16, VRAM, disk and compilers' },
  'wiki40b-to-jsonl': { module: 'wiki40b_to_jsonl', defaultQueue: 'cpu', summary: 'wiki-40b shards to filtered jsonl' },
  'train-tokenizer': { module: 'train_tokenizer', defaultQueue: 'cpu', summary: 'SentencePiece unigram tokenizer' },
  tokenize: { module: 'tokenize', defaultQueue: 'cpu', summary: 'jsonl to a Megatron-LM indexed dataset' },
  pretrain: {
    module: 'pretrain',
    defaultQueue: 'gpu',
    stallTimeout: '30m',
    sweepable: [...TRAINER_HYPERPARAMETERS, 'warmup_steps', 'min_lr_ratio', 'hidden_size', 'num_layers', 'num_heads', 'seq_len', 'rope_theta'],
    stopsAtStep: true,
    summary: 'next-token pretraining of a Llama-architecture model',
  },
  sft: {
    module: 'sft',
    defaultQueue: 'gpu',
    stallTimeout: '30m',
    sweepable: [...TRAINER_HYPERPARAMETERS, 'warmup_ratio', 'max_length'],
    summary: 'supervised fine-tuning with TRL',
  },
  dpo: {
    module: 'dpo',
    defaultQueue: 'gpu',
    stallTimeout: '30m',
    sweepable: [...TRAINER_HYPERPARAMETERS, 'warmup_ratio', 'beta'],
    summary: 'direct preference optimisation with TRL',
  },
  'llm-jp-eval': { module: 'llm_jp_eval', defaultQueue: 'gpu', stallTimeout: '30m', summary: 'llm-jp-eval style exact-match evaluation' },
  'mt-bench': { module: 'mt_bench', defaultQueue: 'gpu', stallTimeout: '30m', summary: 'Japanese MT-Bench answers and LLM-as-judge grading' },
  report: {
    module: 'stages/report/main.js',
    runtime: 'node',
    defaultQueue: 'cpu',
    receivesTimeline: true,
    writesRunReport: true,
    summary: 'HTML report with charts',
  },
} as const satisfies Record<string, StageKindInfo>;

/** Name of a built-in stage kind. */
export type StageKind = keyof typeof KINDS;

/** Every built-in kind, keyed by the name used in `uses:`. */
export const STAGE_KINDS: Readonly<Record<StageKind, StageKindInfo>> = KINDS;

/** Names of all built-in kinds, sorted. */
export const STAGE_KIND_NAMES = Object.keys(STAGE_KINDS).sort() as StageKind[];

/** The built-in kind named by `uses`, if it is one. */
export function stageKindInfo(uses: string | undefined): StageKindInfo | undefined {
  return uses !== undefined && isStageKind(uses) ? STAGE_KINDS[uses] : undefined;
}

/** True when `name` is a built-in kind. */
export function isStageKind(name: string): name is StageKind {
  return Object.prototype.hasOwnProperty.call(STAGE_KINDS, name);
}
