"""hivemesh's wire protocols: framing, messages and codecs of discovery, handoff and control."""

from protocols._logsafe import logsafe

__all__ = ["logsafe"]
