/** Compared against in slices: memcmp through Buffer.equals runs at memory speed. */
const ZERO_SLICE = Buffer.alloc(256 * 1024);

/** True when every byte of `buf` is zero. Random data exits on the first slice. */
export function isAllZero(buf: Uint8Array): boolean {
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let at = 0; at < view.length; at += ZERO_SLICE.length) {
    const end = Math.min(view.length, at + ZERO_SLICE.length);
    if (!view.subarray(at, end).equals(ZERO_SLICE.subarray(0, end - at))) return false;
  }
  return true;
}
