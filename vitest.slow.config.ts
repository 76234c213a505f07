import { defineConfig } from 'vitest/config';

/** Slow tests (large images): `npm run test:slow`. Not part of `npm test`. */
export default defineConfig({
  test: {
    include: ['test/slow/**/*.slow.ts'],
    maxWorkers: 1,
    testTimeout: 600_000,
  },
});
