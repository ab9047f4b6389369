"""Shared fixtures of the deathtensors pytest suite."""

from __future__ import annotations

import builtins
import pickle
from typing import Any, Callable, List

import pytest


@pytest.fixture
def no_code_execution(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Make eval, exec, pickle and torch.load raise, and record every call.

    Returns the list of forbidden calls seen, to be checked at the end of the
    test (so a call whose exception the library swallowed is still noticed).
    Request this fixture only after lazy imports are warmed up: importing a
    module runs ``exec``.
    """
    calls: List[str] = []

    def forbidden(what: str) -> Callable[..., Any]:
        def raiser(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            raise AssertionError(f"deathtensors called {what} while reading a file")

        return raiser

    try:  # imported before exec is patched: an import runs exec
        import torch
    except ImportError:  # pragma: no cover - torch is a dev dependency
        torch = None
    if torch is not None:
        monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    monkeypatch.setattr(pickle, "loads", forbidden("pickle.loads"))
    monkeypatch.setattr(pickle, "load", forbidden("pickle.load"))
    monkeypatch.setattr(pickle, "Unpickler", forbidden("pickle.Unpickler"))
    monkeypatch.setattr(builtins, "eval", forbidden("eval"))
    monkeypatch.setattr(builtins, "exec", forbidden("exec"))
    return calls
