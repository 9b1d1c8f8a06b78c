// ESLint for tanren's TypeScript: typescript-eslint's recommended rules with
// type information, the promise rules that catch an un-awaited activity or
// client call, and a ban on side-effecting modules inside workflows/.
// `infra/lint` (and `make lint`, `npm run lint`) runs it.
import { builtinModules } from 'node:module';
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

/**
 * Modules workflow code must never import: Node built-ins (the workflow
 * sandbox has none, and they would make replay non-deterministic) and the
 * packages that do I/O. Type-only imports are erased at compile time and stay
 * allowed (workflows import the activities' types that way).
 */
const WORKFLOW_BANNED_MODULES = {
  paths: [
    ...builtinModules.filter((name) => !name.startsWith('_')),
    'execa',
    'minio',
    'pino',
    '@temporalio/activity',
    '@temporalio/worker',
    '@temporalio/client',
  ].map((name) => ({
    name,
    message: 'workflows/ is deterministic code: no Node built-ins or I/O packages (call an activity instead).',
    allowTypeImports: true,
  })),
  patterns: [
    {
      group: ['node:*', '@temporalio/activity/*', '@temporalio/worker/*', '@temporalio/client/*', 'minio/*', 'pino/*', 'execa/*'],
      message: 'workflows/ is deterministic code: no Node built-ins or I/O packages (call an activity instead).',
      allowTypeImports: true,
    },
  ],
};

export default defineConfig(
  {
    // stages/ is Python (ruff's and pyright's) except the Node stage programs in stages/report/.
    ignores: ['dist/**', 'node_modules/**', 'stages/*', '!stages/report/', '.tanren/**', '.tanren-test/**', 'test-artifacts/**', 'test/fixtures/**'],
  },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    linterOptions: {
      reportUnusedDisableDirectives: 'error',
    },
    rules: {
      // An un-awaited promise is a lost error (or, in a workflow, a command that
      // never completes before the workflow does). Fire-and-forget is allowed
      // only as an explicit `void`.
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          ignoreVoid: true,
          // node:test's describe/it return promises the runner itself awaits.
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      // Tuning of the recommended set; each entry says why.
      // Unused names are tsc's job (noUnusedLocals); `_`-prefixed ones are
      // deliberate placeholders in destructuring and callbacks.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // An async function without await is how this code implements a
      // Promise-returning contract (commander actions, vega's loader, payload
      // codecs, activity fakes): it also turns a synchronous throw into the
      // rejection those callers handle.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // Tests and benchmarks read JSON documents (histories, reports, CLI
    // output) whose shape the assertions themselves check, build fakes as
    // object literals, and print whatever value arrived in a failure message.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/unbound-method': 'off',
      '@typescript-eslint/no-base-to-string': 'off',
      '@typescript-eslint/restrict-template-expressions': 'off',
    },
  },
  {
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': 'off',
      '@typescript-eslint/no-restricted-imports': ['error', WORKFLOW_BANNED_MODULES],
    },
  },
  {
    // This file itself is plain JavaScript outside tsconfig.json: lint it without type information.
    files: ['**/*.js'],
    extends: [tseslint.configs.disableTypeChecked],
  },
);
