import { describe, expect, it } from 'vitest';
import { ErrorCode, parseSize } from '../../src/index.js';

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['64K', 65536],
    ['64k', 65536],
    ['1M', 1 << 20],
    ['4G', 4 * 2 ** 30],
    ['1T', 2 ** 40],
    ['1.5G', 1.5 * 2 ** 30],
    ['64KiB', 65536],
    ['0', 0],
  ])('reads %s as %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'lots', '-1', '1X', '1.3', '4 G B'])('refuses %j with BM_ERR_INVALID_OPTION', (text) => {
    expect(() => parseSize(text)).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_OPTION }));
  });
});
