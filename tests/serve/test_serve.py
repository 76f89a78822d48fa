"""The HTTP server (serve.py, LitServe): answers equal predict.py's, bad input is a 4xx, key, info."""

import base64
import hashlib
import importlib.util
import io
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.inference.predictor import Predictor
from product_cnn.models.checkpoint import read_checkpoint
from tests.serve.server import AUTH, NO_UNKNOWN, Server, post_file, served


def test_answers_equal_predict_py(server, tiny_run, photos):
    expected = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos, topk=3)
    for path, want in zip(photos, expected, strict=True):
        got = post_file(server.url, path).json()
        assert got["category"] == served(want)
        assert got.get(want.verdict or "unsure", False) == bool(want.verdict)
        assert got["confidence"] == pytest.approx(want.confidence, abs=2e-6)  # OpenVINO: docs/performance.md
        assert got["similarity"] == pytest.approx(want.similarity, abs=1e-5)
        assert [n for n, _ in got["topk"]] == [n for n, _ in want.topk]
        assert [n["category"] for n in got["nearest"]] == [c for c, _, _ in want.nearest]  # evidence
        assert [n["similarity"] for n in got["nearest"]] == pytest.approx([s for _, _, s in want.nearest],
                                                                          abs=1e-5)
    # JSON with base64, and several files in one request (a list, in order)
    body = {"image": base64.b64encode(photos[0].read_bytes()).decode()}
    answer = httpx.post(f"{server.url}/predict", json=body, headers=AUTH).json()
    assert answer["category"] == served(expected[0])
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:3]]
    several = httpx.post(f"{server.url}/predict", files=files, headers=AUTH, timeout=60).json()
    assert [r["category"] for r in several] == [served(p) for p in expected[:3]]


def test_the_nearest_training_photos_are_served_as_thumbnails(server, tiny_run, photos):
    got = post_file(server.url, photos[0]).json()
    want = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos[:1])[0]
    assert len(got["nearest"]) == 3
    first = httpx.get(f"{server.url}{got['nearest'][0]['photo']}", headers=AUTH, timeout=30)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    shown = Image.open(io.BytesIO(first.content))
    assert max(shown.size) <= 160 and Path(want.nearest[0][1]).parent.name == want.nearest[0][0]
    assert httpx.get(f"{server.url}{got['nearest'][0]['photo']}", timeout=30).status_code == 401
    missing = httpx.get(f"{server.url}/photo/100000", headers=AUTH, timeout=30)
    assert missing.status_code == 404 and "no training photo 100000" in missing.json()["error"]


def test_explain_1_returns_a_heatmap_of_the_photo_sent_and_only_then(server, tiny_run, photos):
    from product_cnn.inference.explain import Explainer

    with photos[0].open("rb") as handle:
        got = httpx.post(f"{server.url}/predict", files={"file": ("p.jpg", handle, "image/jpeg")},
                         data={"explain": "1"}, headers=AUTH, timeout=60).json()
    assert got["heatmap"].startswith("data:image/png;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(got["heatmap"].split(",", 1)[1])))
    with Image.open(photos[0]) as photo:
        assert shown.format == "PNG" and shown.size == photo.size  # drawn over the photo sent
    predictor = Predictor.from_checkpoint(tiny_run["best"], device="cpu")
    from product_cnn.data.images import load_image

    image = load_image(photos[0], predictor.image_size)[None]
    target = predictor.class_names.index(got["topk"][0][0])
    assert Explainer(predictor.explain_net, (64, 64)).maps(image, [target]).max() == pytest.approx(1.0)
    assert "heatmap" not in post_file(server.url, photos[0]).json()  # never by default
    with photos[0].open("rb") as handle:
        bad = httpx.post(f"{server.url}/predict", files={"file": ("p.jpg", handle, "image/jpeg")},
                         data={"explain": "maybe"}, headers=AUTH, timeout=60)
    assert bad.status_code == 400 and "explain='maybe'" in bad.json()["error"]
    assert httpx.get(f"{server.url}/info", headers=AUTH).json()["explain"] is True


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 Mpx, a few kB
    return buffer.getvalue()


def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, photos, tmp_path):
    good = photos[0].read_bytes()
    cases = {
        "not an image": ({"files": {"file": ("a.bin", os.urandom(3000), "application/octet-stream")}}, 415),
        "text named .jpg": ({"files": {"file": ("notes.jpg", b"just some text\n" * 20, "image/jpeg")}}, 415),
        "truncated JPEG": ({"files": {"file": ("cut.jpg", _jpeg(600, 800)[:20000], "image/jpeg")}}, 400),
        "zero bytes": ({"files": {"file": ("empty.jpg", b"", "image/jpeg")}}, 400),
        "decompression bomb": ({"files": {"file": ("bomb.png", _bomb(), "image/png")}}, 413),
        "over the size limit": ({"files": {"file": ("big.jpg", b"\xff" * (21 * 2**20), "image/jpeg")}}, 413),
        "too many files": ({"files": [("file", ("x.jpg", good, "image/jpeg"))] * 17}, 413),
        "malformed JSON": ({"content": b'{"image": ', "headers": {"Content-Type": "application/json"}}, 400),
        "malformed base64": ({"json": {"image": "@@not base64@@"}}, 400),
        "no photo": ({"json": {"url": "http://example.com/a.jpg"}}, 400),
        "empty body": ({}, 400),
    }
    for name, (kwargs, status) in cases.items():
        headers = {**AUTH, **kwargs.pop("headers", {})}
        response = httpx.post(f"{server.url}/predict", headers=headers, timeout=60, **kwargs)
        assert response.status_code == status, (name, response.text)
        reason = response.json()["error"]
        assert reason and "\n" not in reason and "Traceback" not in reason, (name, reason)
        assert post_file(server.url, photos[1]).status_code == 200, name  # and the next one is served


def _jpeg(height: int, width: int) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype("uint8")).save(
        buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_the_api_key_is_enforced(server, photos):
    assert post_file(server.url, photos[0], headers={}).status_code == 401
    assert post_file(server.url, photos[0], headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{server.url}/info").status_code == 401
    assert post_file(server.url, photos[0]).status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200  # health and the page need no key
    assert "<html" in httpx.get(f"{server.url}/").text


def test_info_describes_the_model(server, tiny_run):
    info = httpx.get(f"{server.url}/info", headers=AUTH).json()
    assert info["class_names"] == ["Bags", "Cups", "Pens"] and info["architecture"] == "keras_cnn"
    assert info["input_size"] == [64, 64] and info["model_file"] == str(tiny_run["best"])
    assert info["sha256"] == hashlib.sha256(Path(tiny_run["best"]).read_bytes()).hexdigest()
    assert info["version"]
    card = ConfidenceCard.from_dict(read_checkpoint(tiny_run["best"])["confidence"])
    assert info["calibration"]["temperature"] == pytest.approx(card.temperature)
    assert info["gate"]["unknown_threshold"] == pytest.approx(card.unknown_threshold)
    assert info["gate"]["min_confidence"] is None
    if importlib.util.find_spec("openvino"):  # backend=auto: the checkpoint's cached export answers
        assert info["backend"] == "openvino" and info["export"].endswith("-v3.xml")


def _children(pid: int) -> set[int]:
    """Every live (not zombie) process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        kids = {p for p, parent in parents.items() if parent == current}
        found |= kids
        todo += list(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_unsure_answers_and_sigterm_stops_every_server_process(tiny_run, photos, tmp_path):
    import threading

    running = Server(tmp_path, f"ckpt_path={tiny_run['best']}", "device=cpu", "min_confidence=0.999")
    try:
        want = Predictor.from_checkpoint(tiny_run["best"], device="cpu", gate=NO_UNKNOWN).predict(photos)
        low = min(zip(want, photos, strict=True), key=lambda x: x[0].confidence)
        assert low[0].confidence < 0.999
        got = post_file(running.url, low[1], headers={}).json()
        assert got["category"] is None and (got.get("unsure") or got.get("unknown")) is True
        assert [n for n, _ in got["topk"]] == [n for n, _ in low[0].topk]  # the top-k kept
        assert httpx.get(f"{running.url}/info").json()["gate"]["min_confidence"] == 0.999
        children = _children(running.proc.pid)
        assert len(children) >= 2  # the API server and the inference worker (and LitServe's manager)
        answers, stop = [], threading.Event()
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:8]]

        def keep_asking() -> None:  # predictions in flight when SIGTERM comes
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        answer = client.post(f"{running.url}/predict", files=files)
                        answers.append((sent, answer.status_code))
                        if answer.status_code == 503:  # as a client should: Retry-After
                            time.sleep(float(answer.headers["retry-after"]))
                    except httpx.HTTPError as err:
                        answers.append((sent, type(err).__name__))
                        time.sleep(0.05)

        askers = [threading.Thread(target=keep_asking) for _ in range(3)]
        for asker in askers:
            asker.start()
        time.sleep(1.0)
        signalled = time.monotonic()
        os.kill(running.proc.pid, signal.SIGTERM)  # the parent only, as `kill <pid>` does
        running.proc.wait(timeout=20)
        while time.monotonic() - signalled < 10 and any(_alive(p) for p in children):
            time.sleep(0.05)
        gone = time.monotonic() - signalled
        stop.set()
        for asker in askers:
            asker.join()
        log = running.log.read_text()
        assert not [p for p in children if _alive(p)], log[-2000:]
        assert gone < 3.0, f"the server's processes took {gone:.1f} s to stop"
        with socket.socket() as s:  # the port is free again (for a server, which reuses the address)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", running.port))
        before = [a for sent, a in answers if sent < signalled]
        assert 200 in before and set(before) <= {200, 503}, answers  # answered or refused, none cut off
        assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
        after = log[log.index("Serving on"):].splitlines()
        stopped = [line for line in after if "Stopped (SIGTERM" in line]
        assert len(stopped) == 1 and not [line for line in after if "Shutting down" in line], log[-2000:]
    finally:
        running.stop()


def test_concurrent_requests_each_get_their_own_answer(server, tiny_run, photos):
    predictions = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos)
    expected = {p.name + p.parent.name: r for p, r in zip(photos, predictions, strict=True)}
    jobs = [photos[i % len(photos)] for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: (p, post_file(server.url, p).json()), jobs))
    for path, got in answers:
        want = expected[path.name + path.parent.name]
        assert got["category"] == served(want)
        assert got["confidence"] == pytest.approx(want.confidence, abs=2e-6)  # OpenVINO: docs/performance.md


def test_onnx_backend_gives_the_same_answers(tiny_run, photos, tmp_path):
    pytest.importorskip("onnxruntime")
    from product_cnn.inference.export import export

    onnx = export(tiny_run["best"], "onnx", tmp_path / "model.onnx")
    running = Server(tmp_path, "backend=onnx", f"onnx_path={onnx}")
    try:
        expected = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos[:4], topk=3)
        for path, want in zip(photos[:4], expected, strict=True):
            got = post_file(running.url, path, headers={}).json()
            assert got["category"] == want.category  # "none of these" too: the export carries the bank
            assert got["similarity"] == pytest.approx(want.similarity, abs=1e-5)
            assert [p for _, p in got["topk"]] == pytest.approx([p for _, p in want.topk], abs=1e-4)
        with photos[0].open("rb") as handle:  # an export alone has no gradients: no heatmap, one line
            refused = httpx.post(f"{running.url}/predict", files={"file": ("p.jpg", handle, "image/jpeg")},
                                 data={"explain": "1"}, timeout=60)
        assert refused.status_code == 400 and "explain=1 needs the checkpoint" in refused.json()["error"]
        assert httpx.get(f"{running.url}/info").json()["explain"] is False
    finally:
        running.stop()


@pytest.mark.slow
def test_openvino_backend_gives_the_same_answers(tiny_run, photos, tmp_path):
    pytest.importorskip("openvino")
    from product_cnn.inference.export import export

    xml = export(tiny_run["best"], "openvino", tmp_path / "model.xml")
    running = Server(tmp_path, "backend=openvino", f"openvino_path={xml}")
    try:
        info = httpx.get(f"{running.url}/info").json()
        assert info["backend"] == "openvino"
        expected = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos[:4], topk=3)
        for path, want in zip(photos[:4], expected, strict=True):
            got = post_file(running.url, path, headers={}).json()
            assert got["category"] == want.category
            # the checkpoint's own precision (fp32 here), not OpenVINO's choice (bf16 on such a CPU)
            assert [p for _, p in got["topk"]] == pytest.approx([p for _, p in want.topk], abs=1e-4)
    finally:
        running.stop()


def test_an_exported_backend_needs_its_own_file():
    from product_cnn.errors import ProductCNNError
    from product_cnn.serve.backends import model_info

    with pytest.raises(ProductCNNError, match=r"backend=openvino needs openvino_path=<model.xml>"):
        model_info("openvino", None, "model.onnx")
