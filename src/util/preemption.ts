/**
 * @internal How long the broken-order test hooks wait between the two steps whose order or guard
 * they break, as a preempted thread would, so that the race they open shows up in a short test
 * even on a loaded machine. It is longer than the mirror's 10 ms wait for writes to coalesce, so
 * an idle copier claims a granule marked in it, and a write (one to each side, in write-blocking
 * mode) fits in a copy's pause between its read and its write.
 */
export const HOOK_PREEMPTION_MS = 30;

/** @internal The hooks' pause (see {@link HOOK_PREEMPTION_MS}). Never used outside them. */
export function preemption(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, HOOK_PREEMPTION_MS));
}
