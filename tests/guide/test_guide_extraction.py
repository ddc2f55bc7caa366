"""How samples are read out of the guide and made runnable (no gateway needed)."""

from __future__ import annotations

import pytest

from .guide_samples import Sample, python_blocks

MARKDOWN = """# Title
## Section A
```python
print("a")
```
### Sub B
Some text.
```json
{"not": "python"}
```
```python
x = await agent.capabilities.list()
```
"""


def test_python_blocks_are_grouped_by_their_nearest_heading() -> None:
    assert python_blocks(MARKDOWN) == {
        "Section A": ['print("a")\n'],
        "Sub B": ["x = await agent.capabilities.list()\n"],
    }


@pytest.mark.parametrize(
    ("code", "top_level_await", "needs_agent"),
    [
        pytest.param("print(1)\n", False, False, id="plain-script"),
        pytest.param("async with f() as agent:\n    pass\n", True, False, id="creates-its-own-agent"),
        pytest.param("await agent.x()\n", True, True, id="uses-a-given-agent"),
    ],
)
def test_samples_are_classified(code: str, top_level_await: bool, needs_agent: bool) -> None:
    sample = Sample("s", code)
    assert (sample.uses_top_level_await, sample.needs_agent) == (top_level_await, needs_agent)


def test_only_the_address_and_the_key_are_substituted() -> None:
    sample = Sample("s", 'KruxOS.connect("localhost:7700", api_key="<64-char hex>")\n')
    assert (
        sample.program(address="127.0.0.1:1", key="k" * 64)
        == f'KruxOS.connect("127.0.0.1:1", api_key="{"k" * 64}")\n'
    )


def test_a_sample_using_a_given_agent_runs_inside_a_connected_async_with() -> None:
    program = Sample("s", "print(await agent.capabilities.list())\n").program(address="h:1", key="k")
    compile(program, "program", "exec")
    assert "async with KruxOS.connect_async('h:1', api_key='k') as agent:" in program
