"""Deterministic bodies: any prefix (or slice) can be checked without the origin.

The body is a run of 32-byte lines, each naming its own offset, so a wrong slice
shows in a failure message where it came from:
    b"0000000000 upkeep-test-pattern.\n" ...  (32 bytes a line) ...
"""
import functools

LINE = 32
_SUFFIX = b" upkeep-test-pattern.\n"  # 10 digits + this = 32 bytes
assert 10 + len(_SUFFIX) == LINE


@functools.lru_cache(maxsize=8)
def _block(lines):
    return b"".join(b"%010d%s" % (i * LINE, _SUFFIX) for i in range(lines))


def pattern(size):
    """The first `size` bytes of the pattern."""
    lines = (size + LINE - 1) // LINE
    # Round up to a power of two of lines so the cache stays small and reusable.
    n = 1
    while n < lines:
        n *= 2
    return _block(n)[:size]


def pattern_slice(start, length):
    return pattern(start + length)[start:]
