"""A person at the chat page, as the tests drive it: through the page's own
controls, reading what the page shows."""

import time

from playwright.sync_api import expect

PASSWORD = "correct horse battery"


class Chat:
    def __init__(self, browser, server, mobile=False):
        size = {"width": 390, "height": 780} if mobile else {"width": 1100, "height": 720}
        self.server = server
        self.context = browser.new_context(viewport=size)
        self.page = self.context.new_page()
        self.dialogs = []
        self.errors = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.user = None

    def goto(self):
        self.page.goto(self.server.url + "/")

    def sign_up(self, user, password=PASSWORD):
        self._enter(user, password, "#signup-button")

    def log_in(self, user, password=PASSWORD):
        self._enter(user, password, "#login-button")

    def _enter(self, user, password, button):
        self.goto()
        self.page.fill("#login-user", user)
        self.page.fill("#login-password", password)
        self.page.click(button)
        self.user = user
        self.wait_online()

    def wait_online(self, timeout=15000):
        expect(self.page.locator("#conn-state")).to_have_attribute("data-state", "online", timeout=timeout)

    def open_dm(self, uid):
        self.page.fill("#dm-user", uid)
        self.page.press("#dm-user", "Enter")
        expect(self.page.locator("#chat-title")).to_have_text(uid)
        self.wait_history_loaded()

    def open_conv(self, conv):
        self.page.click(f'#conversations li.conv[data-conv="{conv}"]')
        self.wait_history_loaded()

    def wait_history_loaded(self):
        expect(self.page.locator("#history-state")).not_to_have_text("loading…")

    def send(self, text):
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def stored(self):
        """The stored messages shown, top to bottom: (seq, body text)."""
        return self.page.eval_on_selector_all(
            '#messages li.msg[data-state="stored"]',
            "els => els.map(e => [Number(e.dataset.seq), e.querySelector('.body').textContent])",
        )

    def wait_for_text(self, text, timeout=5000):
        loc = self.page.locator('#messages li.msg[data-state="stored"] .body', has_text=text)
        expect(loc.first).to_be_visible(timeout=timeout)

    def wait_count(self, n, timeout=20000):
        deadline = time.monotonic() + timeout / 1000
        while True:
            got = self.stored()
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self):
        self.context.close()


def two_signed_up(browser, server, open_dm=True):
    """alice and bob, signed up in two browser contexts; with `open_dm`, each
    with their direct conversation open."""
    alice, bob = Chat(browser, server), Chat(browser, server)
    alice.sign_up("alice")
    bob.sign_up("bob")
    if open_dm:
        bob.open_dm("alice")
        alice.open_dm("bob")
    return alice, bob
