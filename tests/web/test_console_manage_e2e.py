"""The console in a real browser: the operator page (operators only), a workspace's owner and
admin controls (budget, hand-over, removal, API keys, threads), and lists read page by page.

Same harness as test_console_e2e.py: one served node per test, screenshots under
test-output/console/<test>/ at 1280×800 and 390×844.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from corral.engine.auth import Caller
from corral.engine.auth.callers import identity_from_claims
from tests.engine.served import ServedNode
from tests.runner.harness import on_loop
from tests.web.browser import browser, login_link, shots  # noqa: F401 - fixtures
from tests.web.test_console_e2e import node, signed_in  # noqa: F401 - fixtures


def as_person(node: ServedNode, subject: str) -> Caller:  # noqa: F811
    """The identity a sign-in link gives `subject` (the node's own issuer), for writing rows through the functions."""
    return Caller.user(identity_from_claims({"iss": node.node.auth.issuer, "sub": subject}))


def call(node: ServedNode, kind: str, path: str, args: dict[str, Any], caller: Caller) -> Any:  # noqa: F811
    value, _ts = on_loop(node, node.engine.call(kind, path, args, caller))
    return value


def new_workspace(page: Any, name: str) -> str:
    page.fill("#new-workspace-name", name)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"#/w/\w+"))
    page.get_by_role("heading", name=re.compile(name)).wait_for()
    return str(page.url.rsplit("/", 1)[-1])


def test_the_operator_page_is_for_operators_only(node: ServedNode, browser: Any, shots: Any) -> None:  # noqa: F811
    operator = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    operator.goto(login_link(node.url, node.node.admin_key))  # the node's local user
    operator.get_by_role("heading", name="Workspaces").wait_for()
    operator.locator("#nav-operator").wait_for()  # shown to operators
    operator.locator("#nav-operator").click()
    operator.get_by_role("heading", name="Operator").wait_for()
    operator.locator("table.runners tr[data-runner] .state", has_text="up").wait_for()
    operator.get_by_text("No running or paused sandbox.").wait_for()

    ada = signed_in(browser, node, "ada", "Ada Lovelace", "ada@example.com")
    assert ada.locator("#nav-operator").is_hidden()  # not an operator: no link
    new_workspace(ada, "Research")
    ada.get_by_role("button", name="Start a run").click()
    ada.locator("table.runs .state", has_text="running").wait_for(timeout=60_000)

    # the operator's page shows ada's run's sandbox the moment it runs, without a reload
    row = operator.locator("table.sandboxes tr[data-sandbox]")
    row.locator(".state", has_text="running").wait_for(timeout=60_000)
    assert "1 running" in operator.locator("#sandbox-counts").inner_text()
    assert row.get_by_role("link", name="a workspace").count() == 1  # a run's sandbox belongs to its workspace
    shots(operator, "01-operator")

    # ada cancels: the operator sees it killed
    ada.locator("table.runs tr[data-run] a").first.click()
    ada.get_by_role("button", name="Cancel run").click()
    ada.locator("#run-status", has_text="canceled").wait_for()
    operator.get_by_text("No running or paused sandbox.").wait_for(timeout=60_000)
    assert "1 killed" in operator.locator("#sandbox-counts").inner_text()

    # a signed-in person who is not an operator: the server's refusal, in the page; no data
    ada.evaluate("location.hash = '#/operator'")
    ada.locator("#operator-sandboxes .error", has_text="only the node's operators").wait_for()
    assert ada.locator("table.sandboxes").count() == 0 and ada.locator("table.runners").count() == 0
    shots(ada, "02-not-an-operator")

    # the admin key grants ada the role: her page turns into the operator's, live
    call(node, "mutation", "corral/operator:grant", {"user_id": f"{node.node.auth.issuer}|ada"}, Caller.admin())
    ada.locator("table.runners tr[data-runner]").first.wait_for()
    ada.locator("#nav-operator").wait_for()

    # anonymous: the sign-in page, nothing else
    anonymous = browser.new_context().new_page()
    anonymous.goto(node.url + "/#/operator")
    anonymous.get_by_role("heading", name="Sign in to Corral").wait_for()
    assert anonymous.locator("table").count() == 0


def test_an_owner_manages_a_workspace(node: ServedNode, browser: Any, shots: Any) -> None:  # noqa: F811
    ada = signed_in(browser, node, "ada", "Ada Lovelace", "ada@example.com")
    bob = signed_in(browser, node, "bob", "Bob Babbage", "bob@example.com")
    workspace_id = new_workspace(ada, "Research")
    ada.fill("#invite-who", "bob@example.com")
    ada.select_option("#invite-role", "admin")
    ada.get_by_role("button", name="Add").click()
    ada.locator("#members").get_by_text("Bob Babbage").wait_for()

    # threads: created with a title, listed live for the other member
    ada.fill("#new-thread-title", "Fix the flaky test")
    ada.get_by_role("button", name="Create thread").click()
    bob.evaluate(f"location.hash = '#/w/{workspace_id}'")
    bob.locator("#thread-list").get_by_text("Fix the flaky test").wait_for()
    bob.locator("#thread option", has_text="Fix the flaky test").wait_for(state="attached")  # offered to start a run in

    # budget (owner): the month's usage against it
    ada.get_by_text("no budget.").wait_for()
    ada.fill("#budget", "5")
    ada.get_by_role("button", name="Set budget").click()
    ada.locator("#usage-line", has_text="of a budget of $5.00").wait_for()
    bob.locator("#usage-line", has_text="of a budget of $5.00").wait_for()
    bob.get_by_text("Only the owner sets the budget").wait_for()  # an admin does not get the owner's forms
    assert bob.locator("#budget").count() == 0

    # API keys (owner or admin): shown once, with the E2B lines to paste; it reaches the E2B API until revoked
    ada.fill("#new-key-name", "ci")
    ada.get_by_role("button", name="Create key").click()
    env = ada.locator("#new-key-env")
    env.wait_for()
    lines = env.inner_text().splitlines()
    assert lines[:2] == [f"export E2B_API_URL={node.url}/e2b", f"export E2B_SANDBOX_URL={node.url}/envd"]
    key = lines[2].removeprefix("export E2B_API_KEY=")
    assert re.fullmatch(r"e2b_\w+", key), lines
    assert ada.evaluate("document.activeElement.id") == "copy-key"  # the next keystroke copies it
    listed = httpx.get(node.url + "/e2b/v2/sandboxes", headers={"X-API-KEY": key}, timeout=30)
    assert listed.status_code == 200 and listed.json() == []
    bob.locator("#key-list tr[data-key]", has_text="ci").wait_for()
    assert key not in bob.content() and key[:8] in bob.locator("#key-list").inner_text()  # the hint, never the key
    shots(ada, "01-workspace-owner")
    ada.fill("#new-key-name", "ci")
    ada.get_by_role("button", name="Create key").click()
    ada.locator("#key-status.error", has_text="already named 'ci'").wait_for()  # the server's words
    bob.get_by_role("button", name="revoke ci").click()
    ada.locator("#key-list", has_text="revoked").wait_for()
    refused = httpx.get(node.url + "/e2b/v2/sandboxes", headers={"X-API-KEY": key}, timeout=30)
    assert refused.status_code == 401, refused.text

    # hand the workspace over to bob, an admin
    ada.once("dialog", lambda dialog: dialog.accept())
    ada.select_option("#transfer-to", label="Bob Babbage")
    ada.get_by_role("button", name="Transfer ownership").click()
    ada.locator("h1", has_text="you: admin").wait_for()
    bob.locator("h1", has_text="you: owner").wait_for()

    # bob removes it, typing its name; ada's list loses it live
    ada.evaluate("location.hash = '#/'")
    ada.locator("#workspaces").get_by_role("link", name="Research").wait_for()
    bob.fill("#remove-confirm", "research")
    bob.get_by_role("button", name="Remove workspace").click()
    bob.locator("#remove-status.error", has_text="exactly").wait_for()
    shots(bob, "02-remove")
    bob.fill("#remove-confirm", "Research")
    bob.get_by_role("button", name="Remove workspace").click()
    bob.get_by_text("Removing Research").wait_for()
    ada.locator("#workspaces").get_by_role("link", name="Research").wait_for(state="detached", timeout=60_000)


def test_the_audit_log_and_the_review_queue_read_page_by_page(node: ServedNode, browser: Any, shots: Any) -> None:  # noqa: F811
    ada = signed_in(browser, node, "ada", "Ada Lovelace", "ada@example.com")
    workspace_id = new_workspace(ada, "Research")
    me = as_person(node, "ada")
    for dollars in range(1, 61):  # 60 privileged acts, through the functions: more than a page (50)
        call(node, "mutation", "corral/workspaces:set_budget", {"workspace_id": workspace_id, "monthly_budget_usd": float(dollars)}, me)
    ada.get_by_role("link", name="Audit").click()
    rows = ada.locator("#audit tbody tr")
    more = ada.get_by_role("button", name="Show more entries")
    more.wait_for()
    assert rows.count() == 50 and '"monthly_budget_usd":60}' in rows.first.inner_text()  # newest first
    shots(ada, "01-audit-first-page")

    # with the keyboard: Tab to "Show more", Enter; the rest comes, and the button goes
    for _ in range(40):
        if ada.evaluate("document.activeElement && document.activeElement.textContent") == "Show more entries":
            break
        ada.keyboard.press("Tab")
    else:
        raise AssertionError("Show more is not reachable with Tab")
    ada.keyboard.press("Enter")
    more.wait_for(state="detached")
    everything = rows.count()
    assert everything >= 60 and '"monthly_budget_usd":1}' in rows.nth(everything - 1).inner_text() + rows.nth(everything - 2).inner_text()
    # live on every page: a new act shows at the top at once, nothing is lost or repeated
    call(node, "mutation", "corral/workspaces:set_budget", {"workspace_id": workspace_id, "monthly_budget_usd": None}, me)
    ada.locator("#audit tbody tr").first.get_by_text('{"monthly_budget_usd":null}').wait_for()
    rows.nth(everything).wait_for()
    assert rows.count() == everything + 1
    shots(ada, "02-audit-all")

    # the review queue reads the same way (empty here: it says so)
    ada.get_by_role("link", name="Review").click()
    ada.get_by_text("Nothing waits for review.").wait_for()
