"""The private names of our dependencies that the package relies on (utils/private_apis.py) still exist: an
upgrade that drops one fails here, by name, with the reason it was needed."""

from __future__ import annotations

import importlib

import pytest

from aigc_lab.utils.private_apis import PRIVATE_APIS


@pytest.mark.parametrize("module, attribute, where, why", PRIVATE_APIS,
                         ids=[f"{m}:{a}" for m, a, _, _ in PRIVATE_APIS])
def test_private_api_still_exists(module, attribute, where, why):
    target = importlib.import_module(module)
    for part in (attribute or "").split(".") if attribute else ():
        assert hasattr(target, part), f"{module}.{attribute} is gone (used in {where}: {why})"
        target = getattr(target, part)


def test_each_entry_names_the_file_that_uses_it():
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "aigc_lab"
    for module, attribute, where, _ in PRIVATE_APIS:
        name = attribute.split(".")[-1] if attribute else module
        uses = {"should_update_logs": "_logger_connector", "setup": "_throughputs"}.get(name, name)
        assert uses in (src / where).read_text(), f"{where} no longer uses {uses}: drop it from utils/private_apis.py"
