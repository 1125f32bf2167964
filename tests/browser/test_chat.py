"""The chat page in a real browser against the real server."""

import re
import time

from playwright.sync_api import expect

from chat import Chat, two_signed_up


def test_two_people_chat_and_the_reload_shows_the_history_in_order(browser, server, screenshots):
    alice, bob = two_signed_up(browser, server, open_dm=False)
    # Each lets the other see when they are online.
    assert server.api("PUT", "/v1/contacts/bob", server.token("alice"))[0] == 204
    assert server.api("PUT", "/v1/contacts/alice", server.token("bob"))[0] == 204
    bob.open_dm("alice")
    alice.open_dm("bob")
    expect(alice.page.locator("#chat-dot")).to_have_attribute("data-status", "online")

    # One sends; the other sees it within a second.
    start = time.monotonic()
    alice.send("hello bob")
    bob.wait_for_text("hello bob", timeout=1000)
    assert time.monotonic() - start < 1.0
    # The sender's copy is confirmed by its seq.
    expect(alice.page.locator('#messages li.msg[data-seq="1"] .body')).to_have_text("hello bob")
    expect(alice.page.locator("#messages li.pending")).to_have_count(0)

    for i in range(1, 6):
        (bob if i % 2 else alice).send(f"line {i}")
        (alice if i % 2 else bob).wait_for_text(f"line {i}")
    want = [[1, "hello bob"]] + [[i + 1, f"line {i}"] for i in range(1, 6)]
    assert alice.wait_count(6) == want
    assert bob.wait_count(6) == want

    bob.page.reload()
    bob.wait_online()
    bob.open_conv("dm:alice:bob")
    assert bob.wait_count(6) == want
    alice.page.set_viewport_size({"width": 1100, "height": 640})
    alice.page.screenshot(path=str(screenshots / "chat.png"))
    assert not alice.errors and not bob.errors, alice.errors + bob.errors
    alice.close()
    bob.close()


def test_history_pages_in_on_scroll_up_and_unread_counts(browser, server):
    # 130 messages stored before the page opens: the newest page is shown first,
    # the rest come as the reader scrolls up, all in order.
    status, _ = server.api("POST", "/v1/accounts", body={"user": "carol", "password": "pw-carol-1"})
    assert status == 201
    token = server.token("dave")
    for i in range(1, 131):
        status, body = server.api(
            "POST", "/v1/messages", token, {"to": "carol", "body": {"text": f"m{i}"}, "client_msg_id": f"c{i}"}
        )
        assert status == 201, body
    carol = Chat(browser, server)
    carol.log_in("carol", "pw-carol-1")
    conv = carol.page.locator('#conversations li.conv[data-conv="dm:carol:dave"]')
    expect(conv.locator(".unread")).to_have_text("130")
    carol.open_conv("dm:carol:dave")
    first = carol.stored()
    assert [s for s, _ in first] == list(range(81, 131))
    for _ in range(20):
        if len(carol.stored()) == 130:
            break
        carol.page.eval_on_selector("#scroller", "s => { s.scrollTop = 0; }")
        time.sleep(0.3)
    assert carol.stored() == [[i, f"m{i}"] for i in range(1, 131)]
    # Read: the count is gone, here and on the server.
    expect(conv.locator(".unread")).to_have_count(0)
    deadline = time.monotonic() + 5
    while True:
        _, convs = server.api("GET", "/v1/conversations", server.token("carol"))
        cursor = convs["conversations"][0]["cursor"]
        if cursor == 130 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert cursor == 130
    carol.close()


def test_a_body_is_text_never_markup(browser, server):
    alice, bob = two_signed_up(browser, server)
    evil = "<img src=x onerror=alert(1)>"
    alice.send(evil)
    bob.wait_for_text(evil)
    assert bob.stored() == [[1, evil]]
    assert alice.wait_count(1) == [[1, evil]]
    for chat in (alice, bob):
        assert chat.page.locator("#messages img").count() == 0
        assert chat.dialogs == []
    # A user id that looks like markup cannot even be typed in: ids are checked.
    bob.page.reload()
    bob.wait_online()
    bob.open_conv("dm:alice:bob")
    assert bob.stored() == [[1, evil]]
    assert bob.page.locator("#messages img").count() == 0
    assert bob.dialogs == []
    alice.close()
    bob.close()


def test_a_group_of_three_chats(browser, server):
    people = {u: Chat(browser, server) for u in ("ann", "ben", "cat")}
    for u, c in people.items():
        c.sign_up(u)
    ann = people["ann"]

    ann.page.locator("details.panel summary", has_text="New group").click()
    ann.page.fill("#group-name", "Trio")
    ann.page.fill("#group-members", "ben, cat")
    ann.page.click("#create-group button")
    expect(ann.page.locator("#chat-title")).to_have_text("Trio")
    conv = ann.page.eval_on_selector("#conversations li.conv.current", "e => e.dataset.conv")
    assert conv.startswith("group:")
    for u in ("ben", "cat"):
        loc = people[u].page.locator(f'#conversations li.conv[data-conv="{conv}"]')
        expect(loc).to_have_count(1, timeout=5000)
        people[u].open_conv(conv)
    lines = [("ann", "hi all"), ("ben", "hi ann"), ("cat", "hello"), ("ann", "bye")]
    for n, (u, text) in enumerate(lines, start=1):
        people[u].send(text)
        for c in people.values():
            c.wait_for_text(text)
    want = [[n, t] for n, (_, t) in enumerate(lines, start=1)]
    for c in people.values():
        assert c.wait_count(4) == want
    # ann adds dan with the members form; dan's page finds the group.
    dan = Chat(browser, server)
    dan.sign_up("dan")
    ann.page.click("#members-button")
    ann.page.fill("#member-user", "dan")
    ann.page.click("#add-member button")
    expect(ann.page.locator('#members li[data-user="dan"]')).to_have_count(1)
    expect(dan.page.locator(f'#conversations li.conv[data-conv="{conv}"]')).to_have_count(1, timeout=5000)
    dan.open_conv(conv)
    # The group keeps its history from newcomers (history_visible is off).
    expect(dan.page.locator("#history-state")).to_have_text("no messages yet")
    dan.send("I am dan")
    for c in list(people.values()) + [dan]:
        c.wait_for_text("I am dan")
    assert dan.stored() == [[5, "I am dan"]]
    dan.close()
    # Members: ann removes cat, and cat's page lets the group go.
    expect(ann.page.locator('#members li[data-user="cat"]')).to_have_count(1)
    ann.page.locator('#members li[data-user="cat"] button', has_text="Remove").click()
    expect(ann.page.locator('#members li[data-user="cat"]')).to_have_count(0)
    expect(people["cat"].page.locator(f'#conversations li.conv[data-conv="{conv}"]')).to_have_count(0, timeout=5000)
    # ben leaves.
    ben = people["ben"]
    ben.page.click("#members-button")
    ben.page.click("#leave-group")
    expect(ben.page.locator(f'#conversations li.conv[data-conv="{conv}"]')).to_have_count(0)
    _, info = server.api("GET", f"/v1/groups/{conv[6:]}", server.token("ann"))
    assert sorted(m["user"] for m in info["members"]) == ["ann", "dan"]
    for c in people.values():
        assert not c.errors, c.errors
        c.close()


def test_a_presence_dot_turns_offline_when_the_other_closes(browser, server):
    alice, bob = two_signed_up(browser, server, open_dm=False)
    # bob lets alice see his presence.
    bob.page.locator("details.panel summary", has_text="Contacts").click()
    bob.page.fill("#contact-user", "alice")
    bob.page.click("#add-contact button")
    expect(bob.page.locator('#contacts li[data-user="alice"]')).to_have_count(1)
    alice.open_dm("bob")
    dot = alice.page.locator('#chat-dot[data-user="bob"]')
    expect(dot).to_have_attribute("data-status", "online", timeout=5000)
    start = time.monotonic()
    bob.close()
    expect(dot).to_have_attribute("data-status", "offline", timeout=3000)
    took = time.monotonic() - start
    assert took < 2.0, f"offline after {took:.2f} s"
    # And back online when bob comes back.
    bob = Chat(browser, server)
    bob.log_in("bob")
    expect(dot).to_have_attribute("data-status", "online", timeout=3000)
    alice.close()
    bob.close()


def test_the_page_survives_a_server_kill_and_loses_nothing(browser, server):
    alice, bob = two_signed_up(browser, server)
    for i in range(1, 6):
        alice.send(f"before {i}")
    bob.wait_count(5)
    server.kill()
    expect(alice.page.locator("#conn-state")).not_to_have_attribute("data-state", "online", timeout=10000)
    # Sent while the server is down: shown at once, pending, retried.
    for i in range(1, 4):
        alice.send(f"during {i}")
    expect(alice.page.locator("#messages li.pending")).to_have_count(3)
    time.sleep(1.5)
    server.start()
    alice.wait_online(timeout=20000)
    bob.wait_online(timeout=20000)
    # The connection's return sends what waited, at once and in order.
    expect(alice.page.locator("#messages li.pending")).to_have_count(0, timeout=3000)
    for i in range(1, 4):
        bob.send(f"after {i}")
    want = [f"before {i}" for i in range(1, 6)] + [f"during {i}" for i in range(1, 4)]
    got_a = alice.wait_count(11)
    got_b = bob.wait_count(11)
    assert got_a == got_b
    assert [s for s, _ in got_a] == list(range(1, 12))
    texts = [t for _, t in got_a]
    assert texts[:8] == want
    assert sorted(texts[8:]) == [f"after {i}" for i in range(1, 4)]
    # The store agrees: 11 messages, no retry stored twice.
    _, page = server.api("GET", "/v1/conversations/dm:alice:bob/messages?after=0&limit=100", server.token("alice"))
    assert [m["body"]["text"] for m in page["messages"]] == texts
    expect(alice.page.locator("#messages li.pending")).to_have_count(0)
    alice.close()
    bob.close()


def test_the_page_works_on_a_phone_sized_screen(browser, server):
    alice = Chat(browser, server, mobile=True)
    bob = Chat(browser, server)
    alice.sign_up("alice")
    bob.sign_up("bob")
    alice.open_dm("bob")
    # One pane at a time: the list is hidden while the chat is open.
    expect(alice.page.locator("aside.side")).to_be_hidden()
    bob.open_dm("alice")
    bob.send("on your phone?")
    alice.wait_for_text("on your phone?")
    alice.send("yes")
    bob.wait_for_text("yes")
    alice.page.click("#back")
    expect(alice.page.locator("aside.side")).to_be_visible()
    width = alice.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    alice.close()
    bob.close()


def test_what_comes_while_the_page_is_away_or_too_large_to_push_is_fetched(browser, server):
    bob = Chat(browser, server)
    bob.sign_up("bob")
    alice = server.token("alice")
    assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": "first"}})[0] == 201
    expect(bob.page.locator('#conversations li.conv[data-conv="dm:alice:bob"]')).to_have_count(1)
    bob.open_conv("dm:alice:bob")
    assert bob.wait_count(1) == [[1, "first"]]
    # An operator closes bob's connection; what is sent before the page is back
    # reaches it by the sync that follows the reconnection.
    admin = server.token("root", role="admin")
    assert server.api("POST", "/v1/admin/users/bob/disconnect", admin)[1]["disconnected"] == 1
    for i in range(2, 5):
        assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": f"away {i}"}})[0] == 201
    bob.wait_online()
    # Over 32 KiB (delivery.inline_max_bytes): announced by a sync hint, pulled.
    big = "x" * 40_000
    assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": big}})[0] == 201
    assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": "last"}})[0] == 201
    got = bob.wait_count(6)
    assert got == [[1, "first"], [2, "away 2"], [3, "away 3"], [4, "away 4"], [5, big], [6, "last"]]
    assert not bob.errors, bob.errors
    bob.close()


def test_a_pasted_token_logs_in(browser, server):
    zed = Chat(browser, server)
    zed.goto()
    zed.page.click("#token-login summary")
    zed.page.fill("#token-input", server.token("zed"))
    zed.page.click("#token-form button")
    zed.wait_online()
    expect(zed.page.locator("#me")).to_have_text("zed")
    # A token the server did not sign is refused and the page says so.
    other = Chat(browser, server)
    other.goto()
    other.page.click("#token-login summary")
    forged = server.token("eve")[:-4] + "AAAA"
    other.page.fill("#token-input", forged)
    other.page.click("#token-form button")
    expect(other.page.locator("#login")).to_be_visible(timeout=10000)
    expect(other.page.locator("#login-error")).not_to_be_empty()
    zed.close()
    other.close()


def test_notices_and_live_messages(browser, server):
    bob = Chat(browser, server)
    bob.sign_up("bob")
    # A backend's notice: its own conversation, read-only.
    svc = server.token("backend", role="service")
    status, body = server.api("POST", "/v1/notify", svc, {"to": ["bob"], "body": {"text": "your order shipped"}})
    assert status in (200, 201), body
    notices = bob.page.locator('#conversations li.conv[data-conv="sys:bob"]')
    expect(notices.locator(".name")).to_have_text("Notices")
    expect(notices.locator(".unread")).to_have_text("1")
    bob.open_conv("sys:bob")
    assert bob.wait_count(1) == [[1, "your order shipped"]]
    expect(bob.page.locator("#composer")).to_be_hidden()
    # A qos 0 message (typing, say) is shown live in an open chat, never stored.
    bob.open_dm("alice")
    alice = server.token("alice")
    status, body = server.api("POST", "/v1/messages", alice, {"to": "bob", "qos": 0, "body": {"text": "typing…"}})
    assert status == 202, body
    live = bob.page.locator('#messages li.msg[data-state="live"] .body')
    expect(live).to_have_text("typing…")
    assert bob.stored() == []
    assert not bob.errors, bob.errors
    bob.close()


def mqtt_publish_qos0(topic, payload):
    """An MQTT 5.0 PUBLISH at qos 0 (no packet id, no properties)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + b"\x00" + payload
    n, length = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x30" + length + body


def test_a_resync_event_fetches_what_lost_pushes_left_out(browser, server):
    # Between the page and the server, a WebSocket route that can lose the
    # server's PUBLISH packets (the broker writes whole packets per message),
    # as a node cut off from its cluster loses pushes while the connection
    # stays up; and the route can hand the page the server's resync event.
    lose, lost, page_side = [False], [], []

    def route(ws):
        server_side = ws.connect_to_server()
        page_side.append(ws)
        ws.on_message(server_side.send)

        def down(message):
            if lose[0] and isinstance(message, bytes) and message[:1] and message[0] >> 4 == 3:
                lost.append(message)
            else:
                ws.send(message)

        server_side.on_message(down)

    bob = Chat(browser, server)
    bob.page.route_web_socket("**/mqtt", route)
    bob.sign_up("bob")
    alice = server.token("alice")
    assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": "first"}})[0] == 201
    expect(bob.page.locator('#conversations li.conv[data-conv="dm:alice:bob"]')).to_have_count(1)
    bob.open_conv("dm:alice:bob")
    assert bob.wait_count(1) == [[1, "first"]]

    lose[0] = True
    assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": "lost"}})[0] == 201
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        bob.page.wait_for_timeout(20)  # the route's handlers run while Playwright waits
    assert lost, "the push of the second message never came"
    lose[0] = False
    bob.page.wait_for_timeout(400)
    assert bob.stored() == [[1, "first"]], "nothing else brings the lost message"

    page_side[-1].send(mqtt_publish_qos0("users/bob/events", b'{"type":"resync"}'))
    assert bob.wait_count(2, timeout=10000) == [[1, "first"], [2, "lost"]]
    assert server.api("POST", "/v1/messages", alice, {"to": "bob", "body": {"text": "after"}})[0] == 201
    assert bob.wait_count(3) == [[1, "first"], [2, "lost"], [3, "after"]]
    assert not bob.errors, bob.errors
    bob.close()


def test_edits_recalls_and_read_ticks_in_a_direct_chat(browser, server, screenshots):
    alice = Chat(browser, server)
    bob = Chat(browser, server)
    alice.sign_up("alice")
    bob.sign_up("bob")
    alice.open_dm("bob")
    alice.send("helo")
    alice.send("second")
    alice.wait_for_text("second")
    first = alice.page.locator('#messages li.msg[data-seq="1"]')
    expect(first).not_to_have_class(re.compile(r"\bread\b"))

    # Bob opens the chat and reads: alice's messages get their ticks.
    bob.open_dm("alice")
    bob.wait_for_text("second")
    expect(first).to_have_class(re.compile(r"\bread\b"), timeout=10000)
    expect(alice.page.locator('#messages li.msg[data-seq="2"]')).to_have_class(re.compile(r"\bread\b"))

    # Alice edits #1 from its own "edit" button; both pages show the new text, edited.
    first.locator("button.edit").click()
    expect(alice.page.locator("#editing")).to_be_visible()
    assert alice.page.input_value("#text") == "helo"
    alice.page.fill("#text", "hello")
    alice.page.press("#text", "Enter")
    expect(alice.page.locator("#editing")).to_be_hidden()
    for who in (alice, bob):
        one = who.page.locator('#messages li.msg[data-seq="1"]')
        expect(one.locator(".body")).to_have_text("hello", timeout=10000)
        expect(one).to_have_attribute("data-edited", "yes")
    # Bob has no edit or recall buttons on alice's messages.
    expect(bob.page.locator("#messages li.msg button.edit")).to_have_count(0)

    # Alice recalls #2: "message recalled" on both, and it stays so after a reload.
    alice.page.locator('#messages li.msg[data-seq="2"] button.recall').click()
    for who in (alice, bob):
        two = who.page.locator('#messages li.msg[data-seq="2"]')
        expect(two.locator(".body")).to_have_text("message recalled", timeout=10000)
        expect(two).to_have_class(re.compile(r"\brecalled\b"))
    expect(alice.page.locator('#messages li.msg[data-seq="2"] button')).to_have_count(0)
    bob.page.reload()
    bob.wait_online()
    bob.open_conv("dm:alice:bob")
    expect(bob.page.locator('#messages li.msg[data-seq="2"] .body')).to_have_text("message recalled")
    expect(bob.page.locator('#messages li.msg[data-seq="1"] .body')).to_have_text("hello")
    # The revisions take seqs 3 and 4 and show nothing of their own.
    assert [s for s, _ in bob.stored()] == [1, 2]
    alice.page.screenshot(path=str(screenshots / "chat-edit-recall.png"))
    assert alice.errors == [] and bob.errors == []
    assert alice.dialogs == [] and bob.dialogs == []
    alice.close()
    bob.close()
