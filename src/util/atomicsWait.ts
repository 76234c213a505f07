/**
 * Waits until `words[index]` is no longer `seen` (or `timeoutMs` passes). Atomics.waitAsync
 * does not keep a thread's event loop alive, so a thread with nothing else pending would exit
 * mid-wait; a timer alongside it keeps the thread up until the wait ends.
 */
export async function waitForChange(words: Int32Array, index: number, seen: number, timeoutMs: number): Promise<void> {
  const wait = Atomics.waitAsync(words, index, seen, timeoutMs);
  if (!wait.async) return;
  const keepAlive = setTimeout(() => {}, timeoutMs + 100);
  try {
    await wait.value;
  } finally {
    clearTimeout(keepAlive);
  }
}
