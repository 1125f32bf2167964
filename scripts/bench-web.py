#!/usr/bin/env python3
"""The web page's figures (issue 16): time from send in one browser to display in
the other (median of 50), beside the same path through the Rust client library
(imqtt-bench latency --receiver sdk, and a plain rumqttc subscriber), and the
page's first-load transfer size and load time on loopback.

Usage: scripts/bench-web.py [ROUNDS]   (release build; ROUNDS passes, default 3)
Needs what the browser tests need: python3 with playwright, /usr/bin/chromium.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/browser"))

import os  # noqa: E402

os.environ.setdefault("IMQTT_BIN", str(ROOT / "target/release/imqtt"))
from conftest import Server  # noqa: E402
from chat import Chat  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

N = 50

# In the receiving page: the time each stored message appeared in the list.
OBSERVE = """() => {
  window.__seen = {};
  new MutationObserver(ms => {
    const now = performance.timeOrigin + performance.now();
    for (const m of ms) for (const n of m.addedNodes) {
      if (n.dataset && n.dataset.state === 'stored') {
        const b = n.querySelector('.body');
        if (b && !(b.textContent in window.__seen)) window.__seen[b.textContent] = now;
      }
    }
  }).observe(document.querySelector('#messages'), {childList: true});
}"""

# In the sending page: type the text and press Enter (the page's own path).
SEND = """(text) => {
  const t = document.querySelector('#text');
  t.value = text;
  const at = performance.timeOrigin + performance.now();
  t.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
  return at;
}"""


def page_load(browser, server):
    ctx = browser.new_context()  # an empty cache: a first visit
    page = ctx.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#login:not([hidden])")
    page.wait_for_load_state("load")
    size, ms = page.evaluate(
        """() => {
          const nav = performance.getEntriesByType('navigation')[0];
          const res = performance.getEntriesByType('resource');
          return [nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0), nav.loadEventEnd];
        }"""
    )
    ctx.close()
    return size, ms


def browser_latency(browser, server, run):
    a, b = f"wa{run}", f"wb{run}"
    alice, bob = Chat(browser, server), Chat(browser, server)
    alice.sign_up(a)
    bob.sign_up(b)
    bob.open_dm(a)
    alice.open_dm(b)
    bob.page.evaluate(OBSERVE)
    # One send every 100 ms (each done long before the next), read at the end:
    # polling the receiving page while it works would load the 2 cores.
    sent = {}
    for i in range(N):
        text = f"ping {run} {i}"
        sent[text] = alice.page.evaluate(SEND, text)
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while True:
        seen = bob.page.evaluate("() => window.__seen")
        if len(seen) >= N or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = [t for t in sent if t not in seen]
    if missing:
        raise RuntimeError(f"{len(missing)} sends not shown within 10 s")
    lat = [seen[t] - sent[t] for t in sent]
    alice.close()
    bob.close()
    return lat


def bench_latency(server, receiver):
    host, port = server.addrs["mqtt.tcp"].rsplit(":", 1)
    http_port = server.addrs["http"].rsplit(":", 1)[1]
    out = subprocess.run(
        [str(ROOT / "target/release/imqtt-bench"), "--scenario", "latency", "--receiver", receiver,
         "--rate", "20", "--messages", str(N), "--port", port, "--http-port", http_port,
         "--jwt-secret", server.secret, "--senders", "1"],
        capture_output=True, text=True, check=True,
    ).stdout
    fields = dict(kv.split("=", 1) for line in out.splitlines() for kv in line.split() if "=" in kv)
    return fields


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "imqtt", "--bin", "imqtt-bench"],
                   cwd=ROOT, check=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox"])
        for run in range(rounds):
            data = Path(tempfile.mkdtemp(prefix="imqtt-bench-web-"))
            server = Server(data)
            server.start()
            try:
                loads = [page_load(browser, server) for _ in range(5)]
                lat = browser_latency(browser, server, run)
                sdk = bench_latency(server, "sdk")
                raw = bench_latency(server, "rumqttc")
            finally:
                server.stop()
            print(f"run {run}: first load {statistics.median(s for s, _ in loads):.0f} B, "
                  f"load {statistics.median(ms for _, ms in loads):.1f} ms (median of 5 fresh contexts)")
            print(f"run {run}: browser -> browser, {N} sends: median {statistics.median(lat):.2f} ms, "
                  f"p90 {statistics.quantiles(lat, n=10)[-1]:.2f} ms, max {max(lat):.2f} ms")
            for name, f in (("sdk", sdk), ("rumqttc", raw)):
                print(f"run {run}: POST -> {name} (the same {N} at 20/s): "
                      f"p50 {f.get('latency_delivery_p50_ms')} ms, p99 {f.get('latency_delivery_p99_ms')} ms, "
                      f"max {f.get('latency_delivery_max_ms')} ms")
        browser.close()


if __name__ == "__main__":
    main()
