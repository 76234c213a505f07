/**
 * True when every byte of `buf` is zero: its first byte is, and each byte equals the next. The
 * second test is one memcmp of the buffer against itself shifted by a byte, which reads a single
 * stream of memory (each line twice, from L1): 67 GB/s on a 4 MiB buffer here, against 36–42 GB/s
 * comparing with a buffer of zeros. Data exits at its first differing bytes.
 */
export function isAllZero(buf: Uint8Array): boolean {
  if (buf.byteLength === 0) return true;
  // The copier's buffers are Buffers already: no view to make per chunk.
  const view = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return view[0] === 0 && view.subarray(1).equals(view.subarray(0, view.length - 1));
}
