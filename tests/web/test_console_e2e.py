"""The console in a real browser (Chromium through playwright): two people, one node, everything live.

One served node per test (in-process: the test owns its clock and reaches its run's sandbox
through the fleet). Screenshots: test-output/console/<test>/ (tests/web/browser.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.engine.auth import Caller
from corral.engine.clock import Clock
from tests.app.runs_support import require_local_provider
from tests.engine.served import ServedNode
from tests.runner.harness import fleet_node, on_loop, run
from tests.web.browser import browser, login_link, shots  # noqa: F401 - fixtures

SESSION_TTL = 3600.0
TOKEN_TTL = 600.0


@pytest.fixture
def node(short_dir: Path) -> Iterator[ServedNode]:
    require_local_provider()
    with fleet_node(short_dir / "data", sandbox_provider="local", clock=Clock(),
                    auth_session_ttl=SESSION_TTL, auth_session_token_ttl=TOKEN_TTL) as served:
        yield served


def signed_in(browser: Any, node: ServedNode, subject: str, name: str, email: str) -> Any:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(login_link(node.url, node.node.admin_key, subject, name=name, email=email))
    page.get_by_role("heading", name="Workspaces").wait_for()
    assert page.locator("header .who").inner_text() == name
    assert "#login=" not in page.url  # the one-time ticket is kept out of the history
    return page


def tab_to(page: Any, element_id: str, limit: int = 40) -> None:
    """Press Tab until the element has the focus, as a keyboard user would."""
    for _ in range(limit):
        if page.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} is not reachable with Tab")


def watch_states(page: Any) -> None:
    """Record every run status the page shows, as it shows it."""
    page.evaluate("""() => { window.seenStates = [];
      new MutationObserver(() => document.querySelectorAll('table.runs .state').forEach((el) => {
        if (window.seenStates.at(-1) !== el.textContent) window.seenStates.push(el.textContent); }))
      .observe(document.body, {subtree: true, childList: true, characterData: true}); }""")


def test_two_people_work_in_a_workspace_live(node: ServedNode, browser: Any, shots: Any) -> None:  # noqa: F811
    ada = signed_in(browser, node, "ada", "Ada Lovelace", "ada@example.com")
    bob = signed_in(browser, node, "bob", "Bob Babbage", "bob@example.com")
    bob.get_by_text("You belong to no workspace yet").wait_for()
    assert ada.get_by_role("link", name="Operator").count() == 0  # for operators only (test_console_manage_e2e.py)
    shots(ada, "01-workspaces")

    # keyboard alone: create a workspace
    tab_to(ada, "new-workspace-name")
    ada.keyboard.type("Research")
    ada.keyboard.press("Enter")
    ada.wait_for_url(re.compile(r"#/w/\w+"))
    ada.get_by_role("heading", name=re.compile("Research")).wait_for()
    workspace_id = ada.url.rsplit("/", 1)[-1]

    # invite bob by email: his list shows the workspace without a reload
    ada.fill("#invite-who", "bob@example.com")
    ada.get_by_role("button", name="Add").click()
    ada.locator("#members").get_by_text("Bob Babbage").wait_for()
    # bad input: the server's words, in the page
    ada.fill("#invite-who", "bob@example.com")
    ada.get_by_role("button", name="Add").click()
    ada.locator("#invite-status.error", has_text="already").wait_for()
    bob.locator("#workspaces").get_by_role("link", name="Research").wait_for()
    bob.locator("#workspaces").get_by_role("link", name="Research").click()
    bob.get_by_role("heading", name=re.compile("Research")).wait_for()
    assert "you: member" in bob.locator("h1").inner_text()
    bob.get_by_text("Only the owner and admins invite people.").wait_for()

    # a run: booting, then running, live in both pages
    watch_states(ada)
    watch_states(bob)
    ada.get_by_role("button", name="Start a run").click()
    ada.locator("table.runs .state", has_text="running").wait_for(timeout=60_000)
    bob.locator("table.runs .state", has_text="running").wait_for(timeout=60_000)
    for page in (ada, bob):
        seen = page.evaluate("window.seenStates")
        assert seen[-1] == "running" and "booting" in seen, seen
    shots(ada, "02-workspace")

    run_id = ada.locator("table.runs tr[data-run]").first.get_attribute("data-run")
    # (asyncio.run is not for a test that drives playwright: the call runs on the node's loop)
    found, _ts = on_loop(node, node.engine.call("query", "corral/sandbox_runs:lookup", {"sandbox_run_id": run_id},
                                                Caller.admin()))
    sandbox_id = found["sandbox_id"]
    sandbox, _ts = on_loop(node, node.engine.call("query", "corral/sandboxes:lookup", {"sandbox_id": sandbox_id},
                                                  Caller.admin()))
    code, _ = run(node, sandbox_id, "printf 'def answer():\\n    return 42  # the answer\\n' > /home/user/answer.py",
                  token=sandbox["access_token"])
    assert code == 0

    # capture an artifact from the run's page; bob watches the same run
    ada.locator(f'tr[data-run="{run_id}"] a').click()
    ada.locator("#sandbox-state", has_text="running").wait_for()
    bob.evaluate(f"location.hash = '#/run/{run_id}'")  # navigation, not a reload
    bob.get_by_text("No artifact captured yet.").wait_for()
    ada.fill(f"#capture-{run_id}", "answer.py")
    ada.get_by_role("button", name="Capture").click()
    ada.get_by_text("Captured: it waits for review.").wait_for()
    bob.locator("#artifacts .state", has_text="pending").wait_for()
    shots(ada, "03-run")

    # review with the keyboard: the queue, its preview highlighted, approved with "a"
    ada.get_by_role("link", name="Review").click()
    card = ada.locator("article.review").first
    card.wait_for()
    assert card.locator(".tok-kw", has_text="def").count() == 1
    shots(ada, "04-review")
    card.focus()
    ada.keyboard.press("c")
    ada.keyboard.type("Looks right.")
    ada.keyboard.press("Escape")
    card.focus()
    ada.keyboard.press("a")
    ada.get_by_text("Nothing waits for review.").wait_for()
    bob.locator("#artifacts .state", has_text="approved").wait_for()

    # the audit log, for the owner
    ada.get_by_role("link", name="Audit").click()
    ada.locator("#audit").get_by_text("member.add").wait_for()
    shots(ada, "05-audit")

    # bob, a member, may not review: the server says so, in the page
    bob.evaluate(f"location.hash = '#/audit/{workspace_id}'")
    bob.locator("#audit .error").wait_for()


def test_a_session_refreshes_and_an_ended_one_keeps_what_was_typed(node: ServedNode, browser: Any, shots: Any) -> None:  # noqa: F811
    ada = signed_in(browser, node, "ada", "Ada Lovelace", "ada@example.com")
    ada.fill("#new-workspace-name", "Lab")
    ada.keyboard.press("Enter")
    ada.get_by_role("heading", name=re.compile("Lab")).wait_for()

    # the token expires: the page gets a fresh one and keeps working
    node.clock.advance(TOKEN_TTL + 30)
    ada.fill(f"#rename-{ada.url.rsplit('/', 1)[-1]}", "Lab two")
    ada.get_by_role("button", name="Rename").click()
    ada.get_by_role("heading", name=re.compile("Lab two")).wait_for()

    # the session ends: back to sign-in, and what was typed is still there after signing in again
    ada.fill("#invite-who", "half-typed@example.com")
    node.clock.advance(SESSION_TTL + 30)
    ada.get_by_role("button", name="Add").click()
    ada.get_by_role("heading", name="Sign in to Corral").wait_for()
    ada.get_by_text("Sign in again: what you typed is kept.").wait_for()
    shots(ada, "01-session-ended")
    ada.fill("#sign-in-link", login_link(node.url, node.node.admin_key, "ada", name="Ada Lovelace"))
    ada.keyboard.press("Enter")
    ada.get_by_role("heading", name=re.compile("Lab two")).wait_for()
    assert ada.input_value("#invite-who") == "half-typed@example.com"

    # the socket drops: it reconnects by itself, with its queries and the write made meanwhile
    ada.evaluate("window.corral.client.ws.close()")
    ada.fill(f"#rename-{ada.url.rsplit('/', 1)[-1]}", "Lab three")
    ada.get_by_role("button", name="Rename").click()
    ada.get_by_role("heading", name=re.compile("Lab three")).wait_for()

    # a used link does not sign in twice; sign-out ends the session
    used = login_link(node.url, node.node.admin_key, "eve")
    other = browser.new_context().new_page()
    other.goto(used)
    other.get_by_role("heading", name="Workspaces").wait_for()
    again = browser.new_context().new_page()
    again.goto(used)
    again.get_by_text("this sign-in link was already used").wait_for()
    ada.get_by_role("button", name="Sign out").click()
    ada.get_by_text("You are signed out.").wait_for()
    ada.reload()
    ada.get_by_role("heading", name="Sign in to Corral").wait_for()
    shots(ada, "02-signed-out")
