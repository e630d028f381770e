"""Which base each test host boots from: no root needed, so not marked deploy."""

from __future__ import annotations

import pytest

import testbed.testbed as tb


def test_default_is_a_mixed_cluster_of_stock_images() -> None:
    names = {host: recipe.name for host, recipe in tb.host_recipes("").items()}
    assert names == {
        "paxmr1": "debian12-stock",
        "paxmr2": "debian13-stock",
        "paxmr3": "debian12-stock",
        # The spares reuse both bases: booting them builds nothing more.
        "paxmr4": "debian12-stock",
        "paxmr5": "debian13-stock",
    }
    assert {r.suite for r in tb.RECIPES.values()} == {"bookworm", "trixie"}
    for recipe in tb.RECIPES.values():
        assert "python3-venv" not in recipe.packages
        assert "acl" not in recipe.packages


def test_override_and_errors() -> None:
    assert tb.host_recipes("paxmr3=debian13-stock")["paxmr3"].name == "debian13-stock"
    with pytest.raises(tb.TestbedError, match="bad host recipe"):
        tb.host_recipes("paxmr9=debian13-stock")
    with pytest.raises(tb.TestbedError, match="bad host recipe"):
        tb.host_recipes("paxmr1=ubuntu24-stock")


def test_recipe_key_follows_its_content() -> None:
    a, b = tb.RECIPES["debian12-stock"], tb.RECIPES["debian13-stock"]
    assert a.key.startswith("debian12-stock-")
    assert a.key != b.key
    assert type(a)(a.name, a.suite, (*a.packages, "acl")).key != a.key
