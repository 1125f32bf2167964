"""The operator's page at /admin and its API."""

import time

from playwright.sync_api import expect

from chat import Chat


def admin_page(browser, server, token):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    page = ctx.new_page()
    page.goto(server.url + "/admin")
    page.fill("#token-input", token)
    page.click("#token-form button[type=submit]")
    return ctx, page


def test_admin_refuses_a_user_token(browser, server):
    ctx, page = admin_page(browser, server, server.token("mallory"))
    expect(page.locator("#error")).to_contain_text("403")
    expect(page.locator("#dashboard")).to_be_hidden()
    for method, path in [
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/users/alice"),
        ("POST", "/v1/admin/users/alice/disconnect"),
        ("GET", "/v1/admin/cluster"),
    ]:
        status, body = server.api(method, path, server.token("mallory"))
        assert status == 403 and body["error"]["code"] == "forbidden", (path, status, body)
        status, body = server.api(method, path, server.token("svc", role="service"))
        assert status == 403, (path, status, body)
        status, body = server.api(method, path)
        assert status == 401, (path, status, body)
    ctx.close()


def test_admin_shows_live_counts_looks_up_and_disconnects(browser, server, screenshots):
    ctx, page = admin_page(browser, server, server.token("root", role="admin"))
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#s-connections")).to_have_text("0")
    # One node, alone: the nodes table lists it.
    expect(page.locator("#nodes tr")).to_have_count(1)
    alice = Chat(browser, server)
    alice.sign_up("alice")
    expect(page.locator("#s-connections")).to_have_text("1", timeout=5000)
    bob = Chat(browser, server)
    bob.sign_up("bob")
    expect(page.locator("#s-connections")).to_have_text("2", timeout=5000)
    expect(page.locator("#nodes tr td").nth(1)).to_have_text("2", timeout=5000)
    alice.open_dm("bob")
    for i in range(20):
        alice.send(f"n{i}")
    alice.wait_count(20)
    expect(page.locator("#s-stored")).to_have_text("20", timeout=5000)

    page.fill("#lookup-user", "alice")
    page.click("#lookup button")
    expect(page.locator("#u-name")).to_have_text("alice")
    expect(page.locator("#u-status-text")).to_have_text("online")
    device = alice.page.evaluate("sessionStorage.getItem('imqtt.device')")
    expect(page.locator("#u-devices")).to_have_text(device)
    expect(page.locator("#u-convs tr")).to_have_count(1)
    expect(page.locator("#u-convs tr td").first).to_have_text("dm:alice:bob")
    page.screenshot(path=str(screenshots / "admin.png"), full_page=True)

    # Disconnect: alice's page notices, then reconnects by itself.
    page.click("#disconnect")
    expect(page.locator("#u-result")).to_have_text("closed 1 connection")
    expect(alice.page.locator("#conn-state")).not_to_have_attribute("data-state", "online", timeout=5000)
    alice.wait_online(timeout=10000)
    bob.close()
    expect(page.locator("#s-connections")).to_have_text("1", timeout=5000)

    status, body = server.api("GET", "/v1/admin/users/nobody", server.token("root", role="admin"))
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = server.api("GET", "/v1/admin/users/bad%20id", server.token("root", role="admin"))
    assert status == 400
    status, body = server.api("POST", "/v1/admin/users/bob/disconnect", server.token("root", role="admin"))
    assert status == 200 and body == {"user": "bob", "disconnected": 0}
    alice.close()
    ctx.close()


def test_the_pages_are_small_and_cached(browser, server):
    ctx = browser.new_context()
    page = ctx.new_page()
    start = time.monotonic()
    page.goto(server.url + "/")
    expect(page.locator("#login")).to_be_visible()
    sizes = page.evaluate(
        """() => {
          const nav = performance.getEntriesByType('navigation')[0];
          const res = performance.getEntriesByType('resource');
          return [nav.transferSize, ...res.map(r => r.transferSize)];
        }"""
    )
    total = sum(sizes)
    assert 0 < total < 300_000, f"first load transferred {total} bytes"
    # A reload revalidates: 304s, no bodies again.
    page.reload()
    expect(page.locator("#login")).to_be_visible()
    again = page.evaluate(
        "() => performance.getEntriesByType('resource').reduce((n, r) => n + r.transferSize, 0)"
    )
    assert again < total / 10, f"reload transferred {again} of {total} bytes"
    assert time.monotonic() - start < 10
    ctx.close()
