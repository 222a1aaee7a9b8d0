"""Errors of the node and the CLI.

::

    NodeError                      root of everything in ``node``
    ├── ConfigError                invalid config file, environment or flag
    ├── HomeError                  home folder missing, not initialised, or unreadable
    ├── NodeUnreachableError       no node at the address, or it did not answer in time
    ├── NotAuthorisedError         the node refused our client key
    ├── RequestFailedError         the node answered a request with an error
    └── PlacementError             no node in the swarm can run a step
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of node errors; ``str(err)`` is a message fit for the user."""


class ConfigError(NodeError):
    pass


class HomeError(NodeError):
    pass


class NodeUnreachableError(NodeError):
    pass


class NotAuthorisedError(NodeError):
    pass


class RequestFailedError(NodeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PlacementError(NodeError):
    pass
