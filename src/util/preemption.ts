/**
 * @internal The broken-order test hooks wait this long between the two steps whose order or
 * guard they break, as a preempted thread would: it makes the race they open show up in a
 * short test. Never used outside those hooks.
 */
export function preemption(ms = 1): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
