"""Tool packages as wheels, written with ``zipfile`` alone: no build backend, no network.

A wheel is a zip of the package's modules and a ``.dist-info`` folder (METADATA, WHEEL,
entry_points.txt, RECORD with a sha256 per file). :func:`write_tool_wheel` writes one whose
only module defines tools with ``workflows.tools.tool`` and publishes them under the
``hivemesh.tools`` entry points, ready for ``pip install --no-index --find-links DIR``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

# A tool that returns its package's version and the value of an environment variable: what
# the tests read to tell which install ran a step, and what parameters it saw.
PROBE_TOOL = '''
import os
from workflows.tools import tool

VERSION = {version!r}


@tool({tool_name!r}, version=VERSION, output=dict)
def probe(value: str = "", env: str = "") -> dict:
    """Return the package version, the value and an environment variable's value."""
    if value == "boom":
        raise ValueError("the probe was asked to fail")
    return {{"version": VERSION, "value": value, "env": os.environ.get(env, "") if env else ""}}
'''


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def write_tool_wheel(
    folder: Path,
    package: str,
    version: str,
    *,
    tool_name: str | None = None,
    source: str | None = None,
    tools: dict[str, str] | None = None,
) -> Path:
    """Write ``PACKAGE-VERSION-py3-none-any.whl`` into ``folder`` and return its path.

    The wheel's module (the package name with ``_``) holds ``source`` (default: the probe
    tool named ``tool_name``, default ``<module>.probe``); ``tools`` maps entry-point names to
    attributes of that module (default: ``{tool_name: "probe"}``)."""
    module = _normalize(package)
    tool_name = tool_name or f"{module}.probe"
    if source is None:
        source = PROBE_TOOL.format(version=version, tool_name=tool_name)
    tools = tools if tools is not None else {tool_name: "probe"}
    dist_info = f"{module}-{version}.dist-info"
    entry_points = "[hivemesh.tools]\n" + "".join(
        f"{name} = {module}:{attr}\n" for name, attr in tools.items()
    )
    files: dict[str, bytes] = {
        f"{module}/__init__.py": source.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
            "Summary: a hivemesh tool package written by a test\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests.tool_wheels\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": entry_points.encode(),
        f"{dist_info}/top_level.txt": f"{module}\n".encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{dist_info}/RECORD", record)
    return path
