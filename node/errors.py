"""Errors of the node and the CLI.

::

    NodeError                      root of everything in ``node``
    ├── ConfigError                invalid config file, environment or flag
    │   └── SwarmKeyError          a swarm.key file missing, unreadable or not in the pnet format
    ├── HomeError                  home folder missing, not initialised, unreadable or unwritable
    │   └── HomeLockedError        a node is already running from the home (it holds its lock)
    ├── ListenError                a listen address cannot be listened on (in use, not local)
    ├── NodeUnreachableError       no node at the address, or it did not answer in time
    │   ├── NotInSwarmError        the private-network handshake failed: the node is in
    │   │                          another swarm (or none), or we are
    │   └── NoAnswerError          the request was sent but no answer came: outcome unknown
    ├── NotAuthorisedError         the node refused our client key
    ├── RequestFailedError         the node answered a request with an error
    ├── PlacementError             no node in the swarm can run a step
    ├── ParserBusyError            every workflow-parse worker stayed busy: try again soon
    └── ParseWorkerError           a workflow-parse worker failed (not the file's fault)
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of node errors; ``str(err)`` is a message fit for the user."""


class ConfigError(NodeError):
    pass


class SwarmKeyError(ConfigError):
    pass


class HomeError(NodeError):
    pass


class HomeLockedError(HomeError):
    """Another process holds the home's lock: a node is running from it. ``pid`` is the
    pid that process recorded (None if it could not be read)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ListenError(NodeError):
    """A listen address could not be listened on; the message names the address."""


class NodeUnreachableError(NodeError):
    pass


class NoAnswerError(NodeUnreachableError):
    """The request went out but no answer came (timeout, reset, end of stream): the node
    may or may not have acted on it."""


class NotInSwarmError(NodeUnreachableError):
    """The connection failed in the private-network handshake: the two sides do not hold
    the same swarm key (or one of them holds none). ``reason`` says how it failed."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class NotAuthorisedError(NodeError):
    pass


class RequestFailedError(NodeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PlacementError(NodeError):
    pass


class ParserBusyError(NodeError):
    pass


class ParseWorkerError(NodeError):
    pass
