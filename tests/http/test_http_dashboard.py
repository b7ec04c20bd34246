"""The dashboard at /: its API on a real daemon, and a click path in headless Chromium with a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import Cluster, free_port, wait_for
from http_kit import CLOCK, GREETER, start_with_agents, wait_face
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration
UI = {"X-OpenFang-Dashboard": "1"}
TOKEN = "dashboard-token-0123456789"
NOTES = """
[agent]
name = "notes"
description = "Stores what it is told to remember"
module = "builtin:llm-agent"
tools = ["memory_store"]

[agent.model]
provider = "scripted"
default = "Tell me something to remember."
script = [
  {match = '^remember (?P<t>.+)', tool = 'memory_store', args = {text = '{t}'}, then = 'stored: {t}'},
]
"""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_dashboard_api_shows_the_cluster_and_streams_a_chat(make_cluster: type[Cluster]) -> None:
    """overview lists tree and agents; chat streams text pieces then the reply; the page is served."""
    c = make_cluster(workers=1, http=True)
    (greeter,) = start_with_agents(c, GREETER)
    page = httpx.get(c.http_url + "/")
    assert page.status_code == 200 and '<script src="/ui/static/app.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(c.http_url + "/ui/static/app.js").status_code == 200
    overview = httpx.get(c.http_url + "/ui/api/overview", headers=UI).json()
    assert overview["status"]["state"] == "running" and overview["errors"] == {}
    assert [a["agent_id"] for a in overview["agent_list"]["agents"]] == [greeter]
    assert "workers" in [n["id"] for n in overview["tree"]["children"]]
    chat = httpx.post(
        c.http_url + "/ui/api/chat",
        headers=UI,
        json={"agent_id": greeter, "text": "who are you?"},
        timeout=30,
    )
    parts = _ndjson(chat)
    assert chat.headers["content-type"].startswith("application/x-ndjson")
    texts = [p["text"] for p in parts if p.get("kind") == "text"]
    assert len(texts) > 1 and parts[-1]["kind"] == "reply" and "".join(texts) == parts[-1]["reply"]
    missing = httpx.post(c.http_url + "/ui/api/chat", headers=UI, json={"agent_id": "nobody@x", "text": "hi"})
    assert _ndjson(missing)[-1]["kind"] == "error" and _ndjson(missing)[-1]["code"] == "not_found"
    security = httpx.get(c.http_url + "/ui/api/security", headers=UI).json()
    audit = security["audit"]
    assert security["layers"] and audit["available"] is True and audit["ok"] is True and audit["keyed"], audit
    assert c.stop() == 0


def test_dashboard_pick_agents_keeps_the_page_small_with_ten_thousand_agents() -> None:
    """10,000 agents: the page gets the first 200 by id; every filter word must match some field."""
    from openfang.control.http.dashboard import pick_agents

    agents = [
        {"agent_id": f"a{i:05d}@workers-{i % 4}", "name": f"n{i % 10}", "worker": f"workers-{i % 4}",
         "state": "suspended" if i % 7 == 0 else "running"}
        for i in range(10_000)
    ]  # fmt: skip
    assert len(pick_agents(agents, "", 200)) == 200
    shown = pick_agents(agents, "workers-1 SUSPENDED", 10_000)
    assert shown and all(a["worker"] == "workers-1" and a["state"] == "suspended" for a in shown)
    assert len(shown) == sum(1 for i in range(10_000) if i % 4 == 1 and i % 7 == 0)


def test_dashboard_api_refuses_cross_site_and_foreign_hosts(make_cluster: type[Cluster]) -> None:
    """Without the dashboard header, or with a Host that is not the face's, the API answers 403."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c)
    bare = httpx.get(c.http_url + "/ui/api/overview")
    assert bare.status_code == 403 and "X-OpenFang-Dashboard: 1" in bare.json()["error"]["message"]
    rebound = httpx.get(c.http_url + "/ui/api/overview", headers={**UI, "Host": "evil.example:80"})
    assert rebound.status_code == 403 and "evil.example" in rebound.json()["error"]["message"]
    assert c.stop() == 0


def test_dashboard_page_is_public_and_its_api_needs_the_token(make_cluster: type[Cluster]) -> None:
    """With [http] tokens: / and its files load without a token, the API needs it."""
    c = make_cluster(workers=1, http=True)
    c.settings["http_table"] = f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ntokens = ["{TOKEN}"]\n\n'
    c.write_config()
    start_with_agents(c)
    assert httpx.get(c.http_url + "/").status_code == 200
    assert httpx.get(c.http_url + "/ui/static/style.css").status_code == 200
    assert httpx.get(c.http_url + "/ui/api/overview", headers=UI).status_code == 401
    auth = {**UI, "Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(c.http_url + "/ui/api/overview", headers=auth).status_code == 200
    assert c.stop() == 0


def test_dashboard_events_stream_shows_an_agent_state_change(make_cluster: type[Cluster]) -> None:
    """/ui/api/events: suspending an agent arrives as an agent.state event on the stream."""
    c = make_cluster(workers=1, http=True)
    (greeter,) = start_with_agents(c, GREETER)
    with httpx.stream("GET", c.http_url + "/ui/api/events", headers=UI, timeout=30) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("event: hello")
        assert httpx.post(c.http_url + f"/ui/api/agents/{greeter}/suspend", headers=UI).status_code == 200
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("kind") == "agent.state" and event.get("agent_id") == greeter:
                    assert event["state"] == "suspended"
                    break
    assert c.stop() == 0


# -- the browser ------------------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through its chromedriver (selenium); under CI a missing one fails."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: chromium, chromium-driver; make test-deps)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_click_path_in_chromium(make_cluster: type[Cluster], browser: Any, tmp_path: Path) -> None:
    """Agents listed with state; a chat reply streams in; a tool call shows; memory search finds a note."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    c = make_cluster(workers=2, http=True, memory=True)
    c.start(env={"OPENFANG_EMBEDDER": "hash"})
    wait_for(lambda: c.ok("status", {}).get("workers") == 2, what="workers connected")
    greeter, clock, notes = (
        c.ok("agent.spawn", {"manifest": m})["agent_id"] for m in (GREETER, CLOCK, NOTES)
    )
    c.ok("agent.suspend", {"agent_id": clock})
    wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    browser.get(c.http_url + "/")

    def state_of(agent_id: str) -> str | None:
        rows = browser.find_elements(By.CSS_SELECTOR, f'#agents tbody tr[data-agent-id="{agent_id}"]')
        return rows[0].find_element(By.CSS_SELECTOR, "td.state-cell").text if rows else None

    wait.until(lambda _: state_of(greeter) == "running" and state_of(clock) == "suspended")
    assert state_of(notes) == "running"
    assert "workers-0" in browser.find_element(By.ID, "tree").text
    assert "running" in browser.find_element(By.ID, "status").text
    # resume the clock from its row: the page shows it running again
    browser.find_element(By.CSS_SELECTOR, f'tr[data-agent-id="{clock}"] button[data-action="resume"]').click()
    wait.until(lambda _: state_of(clock) == "running")
    wait.until(lambda _: "agent.state" in browser.find_element(By.ID, "events").text)

    def chat(agent_id: str, text: str) -> Any:
        browser.find_element(By.CSS_SELECTOR, f'#agents tbody tr[data-agent-id="{agent_id}"]').click()
        assert Select(browser.find_element(By.ID, "chat-agent")).first_selected_option.text == agent_id
        browser.find_element(By.ID, "chat-input").send_keys(text)
        browser.find_element(By.ID, "chat-send").click()
        selector = f'#chat-log .msg[data-agent-id="{agent_id}"][data-done="true"]'
        return wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, selector))[-1]

    reply = chat(greeter, "who are you?")
    assert reply.text.startswith("I am greeter, a WebAssembly agent")
    assert int(reply.get_attribute("data-pieces")) > 1  # it came in pieces, as they streamed
    assert "msg assistant" in reply.get_attribute("class")
    chat(clock, "what time is it?")
    assert "[tool time_now done ok]" in browser.find_element(By.ID, "chat-log").text
    stored = chat(notes, "remember the blue whale sings at dawn")
    assert stored.text == "stored: the blue whale sings at dawn"
    # memory search finds what the notes agent stored
    browser.find_element(By.ID, "mem-query").send_keys("whale")
    Select(browser.find_element(By.ID, "mem-mode")).select_by_value("keyword")
    browser.find_element(By.ID, "mem-search").click()
    hits = wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#mem-hits li"))
    assert "the blue whale sings at dawn" in hits[0].text and notes in hits[0].text
    # the filter narrows the agent table
    browser.find_element(By.ID, "agent-filter").send_keys("notes")
    wait.until(lambda _: state_of(greeter) is None and state_of(notes) == "running")
    assert "(1 shown of 3)" in browser.find_element(By.ID, "agent-count").text
    # the security report and the audit check the daemon ran
    wait.until(lambda _: "input validation" in browser.find_element(By.ID, "security").text)
    audit_text = browser.find_element(By.ID, "audit").text
    assert "Audit log verification: ok: " in audit_text and "HMAC-keyed chain" in audit_text, audit_text
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")
    assert c.stop() == 0


def test_dashboard_events_and_metrics_over_tcp_with_curve(make_cluster: type[Cluster]) -> None:
    """Control over tcp+CURVE, events on a wildcard host: the face follows the events with its client key."""
    from openfang.control.http.dashboard import reachable
    from openfang.protocol.curve import generate_keys

    assert reachable("tcp://0.0.0.0:7101", "tcp://10.1.2.3:7100") == "tcp://10.1.2.3:7101"
    assert reachable("ipc:///run/e.sock", "ipc:///run/c.sock") == "ipc:///run/e.sock"
    c = make_cluster(workers=1, http=True)
    keys = c.dir / "keys"
    generate_keys(keys, "client")
    port, events_port = free_port(), free_port()
    c.config_path.write_text(
        c.config_path.read_text().replace(
            "[control]\n",
            f'[control]\nendpoint = "tcp://127.0.0.1:{port}"\nevents = "tcp://0.0.0.0:{events_port}"\n'
            f'keys_dir = "{keys}"\n',
        )
    )
    c.start()
    wait_face(c)

    def overview() -> dict[str, Any]:
        return dict(httpx.get(c.http_url + "/ui/api/overview", headers=UI, timeout=15).json())

    wait_for(lambda: overview().get("status", {}).get("workers") == 1, timeout=30, what="the worker over tcp")
    with httpx.stream("GET", c.http_url + "/ui/api/events", headers=UI, timeout=30) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: hello"
        hello = json.loads(next(lines)[len("data: ") :])
        assert hello["endpoint"] == f"tcp://127.0.0.1:{events_port}"  # the wildcard host made reachable
        time.sleep(0.5)  # PUB/SUB joins late
        workers = next(n for n in overview()["tree"]["children"] if n["id"] == "workers")
        victim = workers["children"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        kinds = []
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                kinds.append(event.get("kind"))
                if event.get("kind") == "child.restarted" or (
                    event.get("kind") == "child.started" and event.get("pid") != victim
                ):
                    break
        assert "child.exited" in kinds, kinds
    text = httpx.get(c.http_url + "/metrics", timeout=15).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    restarts = [
        s for s in fams["openfang_child_restarts"].samples if s.labels["path"] == "root/workers/workers-0"
    ]
    assert restarts and restarts[0].value >= 1
    assert c.stop() == 0


def test_dashboard_asks_for_the_token_in_chromium(make_cluster: type[Cluster], browser: Any) -> None:
    """A face with tokens: the page shows the token form, and with the token it lists the agents."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    c = make_cluster(workers=1, http=True)
    c.settings["http_table"] = f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ntokens = ["{TOKEN}"]\n\n'
    c.write_config()
    (greeter,) = start_with_agents(c, GREETER)
    wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    browser.get(c.http_url + "/")
    form = wait.until(lambda _: browser.find_element(By.ID, "token-form").is_displayed())
    assert form and not browser.find_elements(By.CSS_SELECTOR, "#agents tbody tr")
    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait.until(
        lambda _: browser.find_elements(By.CSS_SELECTOR, f'#agents tbody tr[data-agent-id="{greeter}"]')
    )
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    wait.until(lambda _: "(live)" in browser.find_element(By.ID, "events-state").text)
    assert c.stop() == 0
