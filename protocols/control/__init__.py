"""``/hivemesh/control/0.5.0`` (and 0.4.0, 0.3.0, 0.2.0, 0.1.0): what a client (the CLI)
speaks to a node.

One request per stream, answered by exactly one response (or an ``error``); a ``watch``
is answered by a stream of frames, and a ``result`` wait by heartbeats before its answer
(0.3.0 on); a ``status`` with ``explain`` also says how each step was placed (0.4.0 on);
``workflows`` lists the node's registered workflows and ``run`` starts one by id (0.5.0 on).
See docs/protocols.md for the wire specification.
"""

from protocols.control.messages import *  # noqa: F403
from protocols.control.messages import __all__  # noqa: F401
