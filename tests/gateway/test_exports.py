"""The package's public surface is explicit and sorted."""

from __future__ import annotations

import kruxos_gateway


def test_all_names_exist_once() -> None:
    # Its order is checked by ruff (RUF022).
    assert len(set(kruxos_gateway.__all__)) == len(kruxos_gateway.__all__)
    for name in kruxos_gateway.__all__:
        assert hasattr(kruxos_gateway, name), name


def test_the_package_is_typed() -> None:
    from importlib.resources import files

    assert files("kruxos_gateway").joinpath("py.typed").is_file()
