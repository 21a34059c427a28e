"""Router patterns and loading user handlers with --handlers module:attr."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cio_webhooks import ConfigError, Event, Router, load_router


def noop(event: Event) -> None:
    return None


@pytest.mark.parametrize(
    ("pattern", "kind", "matches"),
    [
        ("email.bounced", ("email", "bounced"), True),
        ("email.bounced", ("push", "bounced"), False),
        ("email.*", ("email", "opened"), True),
        ("email.*", ("sms", "opened"), False),
        ("*.bounced", ("sms", "bounced"), True),
        ("bounced", ("whatsapp", "bounced"), True),
        ("*", ("anything", "new"), True),
        ("*.*", ("anything", "new"), True),
    ],
)
def test_patterns(pattern: str, kind: tuple[str, str], matches: bool) -> None:
    router = Router()
    router.add(noop, pattern, name="h")
    assert bool(router.match(*kind)) is matches


def test_a_handler_with_several_patterns_runs_once_per_event() -> None:
    router = Router()
    router.add(noop, "email.*", "*.bounced", name="h")
    assert [r.name for r in router.match("email", "bounced")] == ["h"]


def test_default_name_is_module_and_qualname() -> None:
    router = Router()
    router.on("*")(noop)
    assert router.routes[0].name == "tests.test_handlers.noop"


def test_duplicate_names_are_refused() -> None:
    router = Router()
    router.add(noop, "*", name="h")
    with pytest.raises(ConfigError, match="registered twice"):
        router.add(noop, "*", name="h")


def test_load_router_from_module_attribute_or_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_hooks.py").write_text(
        "from cio_webhooks import Router\n"
        "router = Router()\n"
        "router.add(lambda e: None, 'email.*', name='a')\n"
        "def make():\n"
        "    r = Router(); r.add(lambda e: None, '*', name='b'); return r\n"
        "not_a_router = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [r.name for r in load_router("user_hooks:router").routes] == ["a"]
    assert [r.name for r in load_router("user_hooks:make").routes] == ["b"]
    with pytest.raises(ConfigError, match=r"not a cio_webhooks\.Router"):
        load_router("user_hooks:not_a_router")
    with pytest.raises(ConfigError, match="has no 'missing'"):
        load_router("user_hooks:missing")
    with pytest.raises(ConfigError, match="expected module:attribute"):
        load_router("user_hooks")
    sys.modules.pop("user_hooks", None)


def test_backfilled_events_match_only_routes_that_ask_for_them() -> None:
    router = Router()
    router.add(noop, "email.*", name="plain")
    router.on("email.*", name="wants", backfilled=True)(noop)
    assert [r.name for r in router.match("email", "opened")] == ["plain", "wants"]
    assert [r.name for r in router.match("email", "opened", backfilled=True)] == ["wants"]
    merged = Router()
    merged.include(router)  # the choice travels with the route
    assert [r.name for r in merged.match("email", "opened", backfilled=True)] == ["wants"]
