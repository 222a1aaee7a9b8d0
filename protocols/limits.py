"""What a receiver accepts in one frame: :class:`FrameLimits`.

A frame is bounded twice: by its declared length (checked as soon as the varint prefix is
complete, before any payload is buffered) and by the shape of its JSON (checked before the
JSON is parsed into Python objects, see :mod:`protocols.boundedjson`). docs/protocols.md §7
lists the defaults; a node takes them from the ``network`` section of its config.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_NUMBER_DIGITS = 64
DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_CONTAINERS = 200_000

# At most 200 digits: a mantissa below 1e200 with a two-digit exponent stays a finite float,
# so only three-digit exponents can overflow (that is what the float check looks for); it
# is also far below the int conversion limit Python may be set to (640 at the lowest).
MAX_DIGITS_CEILING = 200
MAX_DEPTH_CEILING = 128


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Bounds a received frame must stay within; breaking one is a ``bad_frame`` error.

    - ``max_frame_size``: payload bytes (the varint length), default 4 MiB. It also bounds
      every string, so strings have no bound of their own.
    - ``max_depth``: nesting of arrays and objects; the frame's own object is level 1.
    - ``max_number_digits``: digits in any run of a number (integer part, fraction or
      exponent); with ``max_depth`` this keeps int conversion and float parsing cheap.
    - ``max_members``: elements of any one array, members of any one object.
    - ``max_containers``: arrays and objects in the whole frame. Each costs a Python
      object of 56-250 bytes: without it 4 MiB of ``[[[0]]],`` would be 2 million lists
      (+200 MB). With the defaults, decoding a 4 MiB frame peaks at about +64 MB (measured:
      200,000 small objects, or 800,000 short strings).

    Numbers must also be finite as 64-bit floats (``1e999`` is refused); that is not
    configurable.
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_depth: int = DEFAULT_MAX_DEPTH
    max_number_digits: int = DEFAULT_MAX_NUMBER_DIGITS
    max_members: int = DEFAULT_MAX_MEMBERS
    max_containers: int = DEFAULT_MAX_CONTAINERS

    def __post_init__(self) -> None:
        if self.max_frame_size < 1:
            raise ValueError(f"max_frame_size must be at least 1, not {self.max_frame_size}")
        # the exact scanner is a regex nested max_depth deep: 128 compiles in about a second
        if not 1 <= self.max_depth <= MAX_DEPTH_CEILING:
            raise ValueError(f"max_depth must be 1..{MAX_DEPTH_CEILING}, not {self.max_depth}")
        # 20 digits hold any 64-bit integer
        if not 20 <= self.max_number_digits <= MAX_DIGITS_CEILING:
            raise ValueError(
                f"max_number_digits must be 20..{MAX_DIGITS_CEILING}, not {self.max_number_digits}"
            )
        if self.max_members < 1:
            raise ValueError(f"max_members must be at least 1, not {self.max_members}")
        # a frame nested max_depth deep holds that many containers
        if self.max_containers < self.max_depth:
            raise ValueError(
                f"max_containers must be at least max_depth ({self.max_depth}), "
                f"not {self.max_containers}"
            )


DEFAULT_LIMITS = FrameLimits()
