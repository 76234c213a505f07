/** setTimeout's longest delay; a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Waits until `words[index]` is no longer `seen` (or `timeoutMs` passes): true unless the wait
 * timed out (a notify may wake it with the value unchanged, so callers recheck). Atomics.waitAsync
 * does not keep a thread's event loop alive, so a thread with nothing else pending would exit
 * mid-wait; a timer alongside it keeps the thread up until the wait ends.
 */
export async function waitForChange(words: Int32Array, index: number, seen: number, timeoutMs: number): Promise<boolean> {
  const wait = Atomics.waitAsync(words, index, seen, timeoutMs);
  if (!wait.async) return wait.value === 'not-equal';
  const keepAlive = setTimeout(() => {}, Math.min(MAX_TIMER_MS, timeoutMs + 100));
  try {
    return (await wait.value) === 'ok';
  } finally {
    clearTimeout(keepAlive);
  }
}
