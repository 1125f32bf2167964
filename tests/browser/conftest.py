"""The browser tests' harness: the real `imqtt` binary on ephemeral ports (and
restarted on the same ones after a SIGKILL), and headless Chromium from the system
(Debian's `chromium`) driven by Playwright.

Environment: IMQTT_BIN (the server binary; default target/debug/imqtt),
CHROMIUM (default /usr/bin/chromium), IMQTT_SCREENSHOTS (where the README's
screenshots are written; default target/browser-screenshots).
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """One imqtt process over one data directory; `kill` and `start` again keep
    the data and the ports."""

    def __init__(self, data: Path):
        self.bin = os.environ.get("IMQTT_BIN", str(ROOT / "target/debug/imqtt"))
        self.data = data
        self.secret = secrets.token_hex(32)
        self.addrs = {"mqtt.tcp": "127.0.0.1:0", "mqtt.ws": "127.0.0.1:0", "http": "127.0.0.1:0"}
        self.proc = None
        self.log = open(data / "server.log", "ab")

    def env(self):
        env = dict(os.environ)
        env.update(
            IMQTT_AUTH__JWT_SECRET=self.secret,
            IMQTT_MQTT__TCP=self.addrs["mqtt.tcp"],
            IMQTT_MQTT__WS=self.addrs["mqtt.ws"],
            IMQTT_HTTP__LISTEN=self.addrs["http"],
            IMQTT_STORE__PATH=str(self.data / "db"),
            RUST_LOG=os.environ.get("RUST_LOG", "warn"),
        )
        return env

    def start(self):
        self.proc = subprocess.Popen(
            [self.bin, "--config", str(ROOT / "config/imqtt.toml"), "--print-addrs"],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        seen = {}
        deadline = time.monotonic() + 30
        while "http" not in seen:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"imqtt exited: see {self.data / 'server.log'}")
            if "=" in line:
                k, v = line.strip().split("=", 1)
                seen[k] = v
            if time.monotonic() > deadline:
                raise RuntimeError("imqtt did not print its addresses")
        self.addrs.update({k: v for k, v in seen.items() if k in self.addrs})
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("imqtt did not become ready")
            time.sleep(0.05)

    def kill(self):
        """SIGKILL: nothing is flushed or closed politely."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self):
        return "http://" + self.addrs["http"]

    def token(self, uid, role=None):
        cmd = [self.bin, "--config", str(ROOT / "config/imqtt.toml"), "token", uid]
        if role:
            cmd += ["--role", role]
        out = subprocess.run(cmd, env=self.env(), check=True, capture_output=True)
        return out.stdout.decode().strip()

    def api(self, method, path, token=None, body=None):
        """The HTTP API, for setting a scene or checking the store; returns
        (status, json or None)."""
        req = urllib.request.Request(self.url + path, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, data=data, timeout=10) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)


@pytest.fixture
def server():
    data = Path(tempfile.mkdtemp(prefix="imqtt-browser-"))
    s = Server(data)
    s.start()
    yield s
    s.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    exe = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def screenshots():
    d = Path(os.environ.get("IMQTT_SCREENSHOTS", ROOT / "target/browser-screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d
