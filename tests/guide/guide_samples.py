"""Read the Python samples out of the SDK guide and turn each into a program that runs as written.

Only two things in a sample are ever substituted: the gateway address (``localhost:7700``) and the API
key (``<64-char hex>`` or the guide's literal example key). Samples that use top-level ``await`` run
inside an async function; samples that use an ``agent`` they did not create receive a connected one.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

GUIDE_ENV = "KRUXOS_SDK_GUIDE"
GUIDE_ADDRESS = "localhost:7700"
GUIDE_KEYS = ("<64-char hex>", "7f3a8c1d2e9b5a4f8e6c1d3b7a9f2e5c8d1b4a7f3c9e6d8b1a4c7f2e5d9b8a3c")

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")


def guide_path() -> Path:
    """``$KRUXOS_SDK_GUIDE``, else ``shared/spec/python-sdk-guide.md`` beside the repository."""
    override = os.environ.get(GUIDE_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "spec" / "python-sdk-guide.md"


def python_blocks(markdown: str) -> dict[str, list[str]]:
    """The ```python blocks of ``markdown``, by the heading they sit under."""
    return fenced_blocks(markdown, "python")


def fenced_blocks(markdown: str, wanted: str) -> dict[str, list[str]]:
    """The fenced blocks of language ``wanted`` (``python``, ``json``), by the heading they sit under."""
    blocks: dict[str, list[str]] = {}
    heading, language, lines = "", None, list[str]()
    for line in markdown.splitlines():
        fence = _FENCE.match(line)
        if language is None and fence:
            language, lines = fence.group(1), []
        elif language is not None and line.strip() == "```":
            if language == wanted:
                blocks.setdefault(heading, []).append("\n".join(lines) + "\n")
            language = None
        elif language is not None:
            lines.append(line)
        elif match := _HEADING.match(line):
            heading = match.group(2)
    return blocks


@dataclass(frozen=True)
class Sample:
    section: str
    code: str

    @property
    def uses_top_level_await(self) -> bool:
        try:
            compile(self.code, self.section, "exec")
        except SyntaxError:
            compile(self.code, self.section, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            return True
        return False

    @property
    def needs_agent(self) -> bool:
        tree = ast.parse(self.code)
        bound = {
            node.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
        }
        used = {
            node.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
        }
        return "agent" in used - bound

    def program(self, *, address: str | None, key: str | None) -> str:
        """The sample as a runnable program talking to ``address`` with ``key``."""
        code = self.code
        if address is not None:
            code = code.replace(GUIDE_ADDRESS, address)
        if key is not None:
            for placeholder in GUIDE_KEYS:
                code = code.replace(placeholder, key)
        if self.needs_agent:
            return (
                "import asyncio\n"
                "from kruxos import KruxOS\n\n"
                "async def _sample(agent):\n"
                f"{textwrap.indent(code, '    ')}\n"
                "async def _main():\n"
                f"    async with KruxOS.connect_async({address!r}, api_key={key!r}) as agent:\n"
                "        await _sample(agent)\n\n"
                "asyncio.run(_main())\n"
            )
        if self.uses_top_level_await:
            body = textwrap.indent(code, "    ")
            return f"import asyncio\n\nasync def _sample():\n{body}\nasyncio.run(_sample())\n"
        return code


def load_sample(path: Path, section: str) -> Sample:
    """The one Python sample under ``section`` in the guide at ``path``."""
    blocks = python_blocks(path.read_text(encoding="utf-8")).get(section)
    if not blocks:
        raise LookupError(f"the guide {path} has no Python sample under the heading {section!r}")
    if len(blocks) != 1:
        raise LookupError(
            f"the guide {path} has {len(blocks)} Python samples under {section!r}, expected one"
        )
    return Sample(section, blocks[0])
