/**
 * @internal The broken-order test hooks wait `ms` (1 by default) between the two steps whose order or
 * guard they break, as a preempted thread would: it makes the race they open show up in a
 * short test. Never used outside those hooks.
 */
export function preemption(ms = 1): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * @internal The copy's pause between its read and its write under the preemptAfterRead hook:
 * a write-blocking write (a write to each side) must fit in it, even on a loaded machine.
 */
export const COPY_PREEMPTION_MS = 30;
