"""``mmduplex serve``: the app's API with Starlette's TestClient (a viewer's socket: lines, a question and its answer,
lag, limits, path escapes, uploads, a closed socket freeing its session), the CLI, and the page in headless Chromium
against a live uvicorn server on 127.0.0.1 (driven over the DevTools protocol)."""

from __future__ import annotations

import base64
import gc
import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="mmduplex serve needs the serve extra: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from mmduplex.cli import main  # noqa: E402

QUESTION = "what colour is the circle ?"
PAD_BIAS = -2.0
"""Makes the tiny test model talk."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    """Three short synthetic videos (5-6 s) in a folder of their own: the library the server offers."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset

    dataset = generate_dataset(
        tmp_path_factory.mktemp("serve") / "synthetic", SyntheticConfig(num_videos=3, duration_s=(5.0, 6.0), seed=3)
    )
    return dataset.videos()


@pytest.fixture(scope="module")
def model(tiny_bundle):
    import mmduplex

    return mmduplex.load(tiny_bundle)


@pytest.fixture
def sessions(model, monkeypatch) -> list[weakref.ref]:
    """Weak references to every session the model opens (a freed session's reference is dead)."""
    opened: list[weakref.ref] = []
    open_session = model.session

    def session(**kwargs):
        new = open_session(**kwargs)
        opened.append(weakref.ref(new))
        return new

    monkeypatch.setattr(model, "session", session)
    return opened


def make_client(model, videos, **settings) -> TestClient:
    from mmduplex.serve.app import ServeSettings, create_app

    return TestClient(create_app(model, ServeSettings(videos=videos[0].parent, pad_bias=PAD_BIAS, **settings)))


def watch(client: TestClient, video_id: str, ask_at: float | None = None, leave_when=None) -> list[dict]:
    """One viewer: start ``video_id``, play, ask :data:`QUESTION` at the first step at or after ``ask_at`` (stream
    time), and read every message until the stream ends (or ``leave_when(message)`` says to close the socket)."""
    messages = []
    with client.websocket_connect("/api/session") as ws:
        ws.send_json({"type": "start", "video": video_id})
        ready = ws.receive_json()
        assert ready["type"] == "ready", ready
        ws.send_json({"type": "play"})
        while True:
            message = ws.receive_json()
            messages.append(message)
            if ask_at is not None and message["type"] == "step" and message["t"] >= ask_at:
                ws.send_json({"type": "ask", "text": QUESTION, "t": message["t"]})
                ask_at = None
            if leave_when is not None and leave_when(message):
                break
            if message["type"] in ("end", "error"):
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1000
                break
    return messages


def of_type(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


def wait_until(condition, timeout: float = 60.0, what: str = "") -> None:
    """Poll ``condition()`` (a hang guard only: the machine may be busy)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        gc.collect()
        time.sleep(0.05)


def offline_lines(model, video: Path) -> list[tuple[float, float, str]]:
    """The same video through the same loop without a server: ``model.stream``."""
    return [(line.start, line.end, line.text) for line in model.stream(video, pad_bias=PAD_BIAS)]


# ---------------------------------------------------------------------------------------------- the API


def test_page_listing_and_files(model, videos):
    with make_client(model, videos) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="video"' in page.text and 'id="ask"' in page.text
        assert client.get("/static/app.js").status_code == 200
        listed = client.get("/api/videos").json()["videos"]
        assert [v["name"] for v in listed] == [v.name for v in videos]
        served = client.get(listed[0]["url"])
        assert served.status_code == 200 and served.content == videos[0].read_bytes()
        part = client.get(listed[0]["url"], headers={"Range": "bytes=0-9"})  # <video> seeks with ranges
        assert part.status_code == 206 and part.content == videos[0].read_bytes()[:10]
        info = client.get("/api/info").json()
        assert info["step_hz"] == model.step_hz and info["fps"] == model.fps and info["viewers"] == 0


def test_only_files_under_the_library_are_served(model, videos, tmp_path):
    library = videos[0].parent
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(videos[0].read_bytes())
    (library / "notes.txt").write_text("not a video")
    link = library / "link.mp4"
    link.symlink_to(secret)
    try:
        with make_client(model, videos) as client:
            ids = [v["id"] for v in client.get("/api/videos").json()["videos"]]
            assert "videos/link.mp4" not in ids and "videos/notes.txt" not in ids
            for path in [
                "/videos/link.mp4",
                "/videos/notes.txt",
                "/videos/../secret.mp4",
                "/videos/%2e%2e/secret.mp4",
                "/videos/..%2fsecret.mp4",
                f"/videos/{secret}",
                f"/videos//{secret}",
                "/videos/",
                "/uploads/..%2f..%2fetc%2fpasswd",
            ]:
                answer = client.get(path)  # 404 from the route's check, or no route at all ("/../" is normalised)
                assert answer.status_code == 404 and "error" in answer.json() or "detail" in answer.json(), path
            for video_id in ["videos/../secret.mp4", f"videos/{secret}", "videos/link.mp4", "uploads/x.mp4", 3]:
                with client.websocket_connect("/api/session") as ws:
                    ws.send_json({"type": "start", "video": video_id})
                    refused = ws.receive_json()
                    assert refused["type"] == "error" and "no such video" in refused["message"], video_id
                    with pytest.raises(WebSocketDisconnect) as closed:
                        ws.receive_json()
                    assert closed.value.code == 1008
    finally:
        link.unlink()
        (library / "notes.txt").unlink()


def test_uploads_are_checked_limited_and_cleaned_up(model, videos, tmp_path):
    good = videos[1].read_bytes()
    with make_client(model, videos, max_upload_mb=len(good) * 1.5 / 2**20, max_uploads=1) as client:
        store = client.app.state.serve.uploads

        def upload(name, data):
            return client.post("/api/upload", files={"file": (name, data, "application/octet-stream")})

        refusals = [
            (upload("clip.mp4", b"\x00not a video" * 100), 415, "not a video"),
            (upload("clip.mp4", b""), 400, "empty"),
            (upload("notes.txt", b"hello"), 415, "not a video file"),
            (upload("big.mp4", b"\x00" * (2 * len(good))), 413, "upload limit"),
            (upload("huge.mp4", b"\x00" * (store.max_bytes + 2**20)), 413, "upload limit"),
            (client.post("/api/upload", files={"other": ("a.mp4", good)}), 400, "field 'file'"),
            (client.post("/api/upload", data={"other": "field"}), 400, "multipart/form-data"),
        ]
        for answer, status, words in refusals:
            assert answer.status_code == status and words in answer.json()["error"], answer.json()
        assert list(store.folder.iterdir()) == []  # refused files are not kept
        accepted = upload("my clip.mp4", good)
        assert accepted.status_code == 200, accepted.json()
        video = accepted.json()["video"]
        assert video["name"] == "my clip.mp4" and video["id"].startswith("uploads/")
        assert client.get(video["url"]).content == good
        assert upload("second.mp4", good).status_code == 429  # max_uploads kept at once
        elsewhere = {"Origin": "http://elsewhere.example"}  # another site's page in the viewer's browser
        foreign = client.post("/api/upload", files={"file": ("a.mp4", good)}, headers=elsewhere)
        assert foreign.status_code == 403 and "own page" in foreign.json()["error"]
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/session", headers=elsewhere):
            pass
        assert client.get("/api/videos").status_code == 200  # the server goes on serving
        messages = watch(client, video["id"], leave_when=lambda m: m["type"] == "frame")
        assert of_type(messages, "frame")
        wait_until(lambda: client.app.state.serve.viewers == 0, what="the session to end")
        assert list(store.folder.iterdir()) == []  # an upload is deleted when its session ends
        assert client.get(video["url"]).status_code == 404
        folder = store.folder
    assert not folder.exists()  # the store's folder goes with the server


def test_a_viewer_gets_lines_a_question_gets_an_answer(model, videos, sessions):
    expected = offline_lines(model, videos[0])
    assert expected, "the tiny model says nothing on this video: the test would prove nothing"
    with make_client(model, videos) as client:
        plain = watch(client, "videos/" + videos[0].name)
        asked = watch(client, "videos/" + videos[0].name, ask_at=1.0)
    # Without a question, the live stream is the offline stream: same loop, paced to the clock.
    assert [(m["start"], m["end"], m["text"]) for m in of_type(plain, "line")] == expected
    report = of_type(plain, "end")[0]["report"]
    frames = of_type(plain, "frame")
    assert len(frames) == report["frames"] and sum(f["tokens"] for f in frames) == report["video_tokens"]
    steps = of_type(plain, "step")
    assert [s["index"] for s in steps] == list(range(report["steps"]))
    assert all(s["lag_s"] >= 0 and s["ms"] > 0 and s["rtf"] > 0 for s in steps)
    words = " ".join(m["text"] for m in of_type(plain, "word"))
    assert words.split() == " ".join(text for _, _, text in expected).split()
    # The question is typed at its time and the next line the model says is marked as its answer.
    (typed,) = of_type(asked, "asked")
    assert typed["text"] == QUESTION and 1.0 <= typed["t"] <= 1.0 + 2 / model.fps
    answers = [m for m in of_type(asked, "line") if m["answer_to"] == typed["id"]]
    assert len(answers) == 1 and answers[0]["start"] >= typed["t"]
    later = [m for m in of_type(asked, "line") if m["start"] >= typed["t"]]
    assert later[0] is answers[0]
    assert len(sessions) == 3  # the offline stream's and the two viewers'
    wait_until(lambda: all(ref() is None for ref in sessions), what="the sessions to be freed")


def test_lag_is_reported_and_a_closed_socket_frees_its_session(model, videos, sessions, monkeypatch):
    open_session = model.session

    def slow_session(**kwargs):  # a model twice slower than real time
        session = open_session(**kwargs)
        step = session.step
        session.step = lambda: (time.sleep(2.0 / model.step_hz), step())[1]
        return session

    monkeypatch.setattr(model, "session", slow_session)
    with make_client(model, videos) as client:
        messages = watch(client, "videos/" + videos[0].name, leave_when=lambda m: m.get("lag_s", 0) > 1.0)
        lags = [m["lag_s"] for m in of_type(messages, "step")]
        assert lags[-1] > 1.0 and lags[-1] > lags[0] + 0.5  # behind, and more and more: shown, not hidden
        assert of_type(messages, "step")[-1]["rtf"] > 1.0
        wait_until(lambda: client.app.state.serve.viewers == 0, what="the slot to be given back")
        wait_until(lambda: all(ref() is None for ref in sessions), what="the session to be freed")
        assert not client.app.state.serve.streams


def test_session_limit(model, videos):
    with make_client(model, videos, max_sessions=1) as client, client.websocket_connect("/api/session") as first:
        first.send_json({"type": "start", "video": "videos/" + videos[0].name})
        assert first.receive_json()["type"] == "ready"
        with client.websocket_connect("/api/session") as second:
            refused = second.receive_json()
            assert refused["type"] == "error" and "busy" in refused["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
            assert closed.value.code == 1013
        answer = client.post("/api/upload", files={"file": ("a.mp4", videos[0].read_bytes())})
        assert answer.status_code == 429 and "busy" in answer.json()["error"]


def test_bad_messages_are_refused(model, videos):
    with make_client(model, videos) as client:
        with client.websocket_connect("/api/session") as ws:
            ws.send_text("not json")
            assert "first message" in ws.receive_json()["message"]
        with client.websocket_connect("/api/session") as ws:
            ws.send_json({"type": "start", "video": "videos/" + videos[0].name})
            ws.receive_json()
            ws.send_json({"type": "play"})
            ws.send_json({"type": "ask", "text": "  ", "t": 1.0})
            ws.send_json({"type": "ask", "text": QUESTION, "t": "soon"})
            ws.send_json({"type": "dance"})
            notices = []
            while len(notices) < 3:
                message = ws.receive_json()
                if message["type"] == "notice":
                    notices.append(message["message"])
            assert "non-blank" in notices[0] and "seconds" in notices[1] and "dance" in notices[2]
            ws.send_json({"type": "stop"})


def test_a_question_in_the_source_is_typed_as_an_ask_question(model, videos):
    """The loop hook the page's questions use: a Question among the frames is typed as ``ask`` types it."""
    from mmduplex.inference.commentary import Commentary, open_frames
    from mmduplex.inference.loop import Question

    session = model.session(pad_bias=PAD_BIAS)

    def source():
        question = Question(2.0, QUESTION)
        for t, frame in open_frames(videos[0], session):
            if question is not None and t >= question.t:
                yield question
                question = None
            yield t, frame

    fed = Commentary(session, source())
    fed_lines = list(fed)
    asked = model.stream(videos[0], ask={2.0: QUESTION}, pad_bias=PAD_BIAS)
    assert fed_lines == list(asked)
    assert [(q.text, step) for q, step in fed.loop.asked] == [(q.text, step) for q, step in asked.loop.asked]
    assert len(fed.loop.asked) == 1


# ---------------------------------------------------------------------------------------------- the CLI


def test_serve_command(tiny_bundle, tmp_path, capsys):
    code = (
        "import sys; from mmduplex.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr  # --help imports no torch and no web stack
    for flag in ("--checkpoint", "--videos", "--host", "--port", "--max-sessions", "--max-upload-mb"):
        assert flag in done.stdout
    assert "127.0.0.1" in done.stdout
    assert main(["serve", "--checkpoint", str(tiny_bundle), "--videos", str(tmp_path / "missing")]) == 2
    assert "--videos must be a folder" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "no_bundle")]) == 2
    assert main(["serve", "--checkpoint", str(tiny_bundle), "--port", "0"]) == 2


# ---------------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def live_server(model, videos):
    """The app on uvicorn in a thread, on 127.0.0.1 (an ephemeral port); yields its base URL."""
    import uvicorn

    from mmduplex.serve.app import ServeSettings, create_app

    app = create_app(model, ServeSettings(videos=videos[0].parent, pad_bias=PAD_BIAS))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=120, what="uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(60)


class DevTools:
    """One Chrome DevTools Protocol connection (JSON messages on a websocket, websocket-client): a call returns its
    method's result; the events that come in between are skipped."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=120, suppress_origin=True)
        self.ids = itertools.count(1)

    def __call__(self, method: str, **params):
        call = next(self.ids)
        self.socket.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    def close(self) -> None:
        self.socket.close()


class Browser:
    """Headless Chromium's DevTools port: :meth:`open` a page."""

    def __init__(self, port: int) -> None:
        self.port = port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=60) as answer:
            self.devtools = DevTools(json.load(answer)["webSocketDebuggerUrl"])

    def open(self, url: str) -> Tab:
        """``url`` in a tab of a new window (Chrome loads and plays media only in a visible tab)."""
        target = self.devtools("Target.createTarget", url=url, newWindow=True)["targetId"]
        return Tab(self, target)


class Tab:
    """One page, driven over the DevTools protocol."""

    def __init__(self, browser: Browser, target: str) -> None:
        self.browser, self.target = browser, target
        self.call = DevTools(f"ws://127.0.0.1:{browser.port}/devtools/page/{target}")
        self.wait("document.readyState === 'complete' && document.querySelectorAll('#video-select option').length > 1")

    def js(self, expression: str):
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def wait(self, expression: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}; the page: {self.state()}"
            time.sleep(0.1)
        return value

    def watch(self, video_id: str) -> None:
        self.js(f"document.getElementById('video-select').value = {json.dumps(video_id)}")
        self.js("document.getElementById('start').click()")

    def ask(self, text: str) -> None:
        self.js(f"document.getElementById('question').value = {json.dumps(text)}")
        self.js("document.querySelector('#ask button').click()")

    def upload(self, path: Path) -> None:
        """Pick ``path`` in the page's file input, as a user does."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def state(self) -> dict:
        return self.js(
            "({state: document.body.dataset.state, error: document.getElementById('error').textContent, "
            "time: document.getElementById('video').currentTime, paused: document.getElementById('video').paused, "
            "ready: document.getElementById('video').readyState, lines: document.querySelectorAll('#lines li').length})"
        )

    def lines(self) -> list[dict]:
        return self.js(
            "Array.from(document.querySelectorAll('#lines li'), li => ({kind: li.className, t: Number(li.dataset.t), "
            "text: li.querySelector('.text').textContent, answerTo: li.dataset.answerTo ?? null}))"
        )

    def close(self) -> None:
        self.call.close()
        self.browser.devtools("Target.closeTarget", targetId=self.target)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a DevTools port on 127.0.0.1; skips when chromium is absent."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the page is not browser-tested")
    pytest.importorskip("websocket", reason="the browser test speaks DevTools with websocket-client (dev extra)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    command = [
        executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
        "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900", f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        wait_until(lambda: port_file.is_file() and port_file.read_text().strip(), timeout=120, what="chromium")
        chromium = Browser(int(port_file.read_text().split()[0]))
        yield chromium
        chromium.devtools.close()
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_page_in_chromium(browser, live_server, model, videos, tmp_path):
    import httpx

    first = browser.open(live_server + "/")
    try:
        first.watch("videos/" + videos[0].name)
        first.wait("document.body.dataset.state === 'playing' && document.getElementById('video').currentTime > 1")
        first.ask(QUESTION)
        played = first.js("document.getElementById('video').currentTime")
        first.wait("document.body.dataset.state === 'ended'")
        assert first.js("document.getElementById('video').currentTime") > played + 1  # it played on, not paused
        lines = first.lines()
        (question,) = [line for line in lines if line["kind"] == "user"]
        assert question["text"] == QUESTION
        model_lines = [line for line in lines if line["kind"].startswith("model")]
        assert model_lines, lines
        answers = [line for line in model_lines if line["answerTo"] is not None]
        assert len(answers) == 1 and answers[0]["t"] >= question["t"], lines
        assert first.js("document.querySelectorAll('#strip .bar').length") > 0
        assert float(first.js("document.getElementById('stat-lag').textContent")) >= 0
        assert first.js("document.getElementById('error').hidden")

        # A bad upload: one clear message on the page; the server goes on serving.
        bad = tmp_path / "holiday.mp4"
        bad.write_bytes(b"\x00definitely not a video" * 64)
        first.upload(bad)
        message = first.wait("!document.getElementById('error').hidden && document.getElementById('error').textContent")
        assert message.startswith("Upload refused:") and "not a video" in message
        assert httpx.get(live_server + "/api/videos").status_code == 200
    finally:
        first.close()

    # Two tabs at once, two videos: each tab's lines are its own stream's.
    tabs = [browser.open(live_server + "/"), browser.open(live_server + "/")]
    try:
        for tab, video in zip(tabs, videos[1:], strict=True):
            tab.watch("videos/" + video.name)
        tabs[0].wait("document.body.dataset.state === 'playing' && document.getElementById('video').currentTime > 1")
        tabs[0].ask("what shape is the blue one ?")
        for tab in tabs:
            tab.wait("document.body.dataset.state === 'ended'")
        mine, theirs = tabs[0].lines(), tabs[1].lines()
        assert [line["text"] for line in mine if line["kind"] == "user"] == ["what shape is the blue one ?"]
        assert not [line for line in theirs if line["kind"] != "model"]
        expected = [(round(start, 2), text) for start, _, text in offline_lines(model, videos[2])]
        assert [(line["t"], line["text"]) for line in theirs] == expected
        screenshot = tabs[1].call("Page.captureScreenshot", format="png")
        assert base64.b64decode(screenshot["data"]).startswith(b"\x89PNG")
    finally:
        for tab in tabs:
            tab.close()
