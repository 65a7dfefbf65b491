"""`r2g serve` as a user meets it: the real command on 127.0.0.1 serving a tiny trained run, asked over HTTP
(the run's facts, an upload, a DICOM, a test study, 20 requests at once, bad uploads) and used end to end by a
headless Chromium (Debian's, driven by Playwright): upload an X-ray, read the report and its label chips, pick a
test study, read its reference. Nothing may be written outside the server's temp folder."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2g.data.dicom import equalize_hist
from r2g.data.reports import clean_report
from r2g.labels import CHEXPERT_LABELS
from r2g.metrics.chexpert import label_report

from .dicoms import radiograph_from_png, save, synthetic_xray
from .test_train import _env, train

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SETTINGS = {"num_beams": 2, "max_new_tokens": 8}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    """(base URL, run folder, the server's working and temp folders, its process): `r2g serve` on a port the OS
    picks, started from an empty folder with its own TMPDIR."""
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("serve")
    run = root / "run"
    train(assets, run, "--ds", "ds_configs/zero2.json", "--mode", "delta", "--max-steps", "2", "--val-every", "2",
          "--val-samples", "2")
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    log = root / "serve.log"
    before = snapshot(run)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "r2g.cli", "serve", "--ckpt", str(run), "--port", "0"],
                                cwd=cwd, env={**_env(), "TMPDIR": str(tmp), "COLUMNS": "200"},
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    url = None
    while url is None and time.time() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if " on http://127.0.0.1:" in line:
                url = line.split(" on ", 1)[1].split("/ ", 1)[0].rstrip("/")
        time.sleep(0.2)
    if url is None:
        proc.kill()
        raise AssertionError(f"r2g serve did not start:\n{log.read_text()[-3000:]}")
    yield {"url": url, "run": run, "cwd": cwd, "tmp": tmp, "proc": proc, "log": log, "before": before}
    proc.terminate()
    proc.wait(timeout=30)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.loads(r.read())


def post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def reference(study: int) -> str:
    """The test study's reference as the shards hold it (the fixture's raw report, R2Gen-cleaned)."""
    return clean_report(f"Study {study}. The Heart: normal-sized.", "iu_xray")


def upload(*files: tuple[str, bytes], settings=SETTINGS) -> dict:
    return {"files": [{"name": n, "data": base64.b64encode(d).decode()} for n, d in files], "settings": settings}


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(png: np.ndarray) -> bytes:
    buf = io.BytesIO()
    radiograph_from_png(png).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_the_header_shows_the_runs_facts_and_its_test_split(server):
    facts = get(server["url"] + "/api/run")
    assert facts["mode"] == "delta" and facts["llm_name"] == "llm" and facts["steps"] == 2
    assert facts["device"] == "cpu" and facts["precision"] == "fp32"
    assert facts["best"]["step"] == 2 and "BLEU_4" in facts["best"]["scores"]
    assert facts["defaults"] == {"num_beams": 2, "max_new_tokens": 6, "repetition_penalty": 2.0}  # the run's own
    assert get(server["url"] + "/api/studies")["ids"] == ["s0030", "s0031", "s0032", "s0033"]
    with urllib.request.urlopen(server["url"] + "/", timeout=30) as r:
        assert b'id="report"' in r.read() and r.headers["Content-Type"].startswith("text/html")


def test_an_upload_gets_a_report_and_its_labels_and_a_dicom_the_same_as_its_mimic_png(server):
    png = synthetic_xray()
    status, a = post(server["url"] + "/api/generate", upload(("x.png", png_bytes(equalize_hist(png)))))
    assert status == 200 and a["report"]
    assert a["labels"] == label_report(a["report"]) and list(a["labels"]) == list(CHEXPERT_LABELS)
    assert a["sources"] == [{"file": "x.png", "format": "png"}] and a["settings"]["num_beams"] == 2
    status, d = post(server["url"] + "/api/generate", upload(("x.dcm", dicom_bytes(png))))
    assert status == 200 and d["report"] == a["report"]
    assert d["sources"][0]["frame"] == 0 and d["sources"][0]["photometric"] == "MONOCHROME1"
    status, two = post(server["url"] + "/api/generate", upload(("f.png", png_bytes(png)), ("l.dcm", dicom_bytes(png))))
    assert status == 200 and [s["file"] for s in two["sources"]] == ["f.png", "l.dcm"] and len(two["thumbnails"]) == 2


def test_a_test_study_comes_with_its_reference_and_scores(server):
    status, a = post(server["url"] + "/api/study", {"id": "s0031", "settings": SETTINGS})
    assert status == 200 and a["study"]["reference"] == reference(31)
    assert set(a["study"]["scores"]) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L"}
    assert a["study"]["reference_labels"] == label_report(a["study"]["reference"])
    status, e = post(server["url"] + "/api/study", {"id": "s9999"})
    assert status == 400 and "s9999" in e["error"]


def test_twenty_requests_at_once_are_all_answered_one_at_a_time(server):
    png = synthetic_xray(5)
    jobs = [("/api/generate", upload((f"v{i}.png", png_bytes(np.roll(png, i, axis=1))))) if i % 2 else
            ("/api/study", {"id": f"s003{i % 4}", "settings": SETTINGS}) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda job: post(server["url"] + job[0], job[1]), jobs))
    assert [status for status, _ in answers] == [200] * 20 and all(a["report"] for _, a in answers)
    spans = sorted((a["started_at"], a["finished_at"]) for _, a in answers)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # never two at once


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, tmp_path):
    big = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(big, format="PNG")
    sixteen = png_bytes(np.full((64, 64), 40_000, np.uint16))
    cases = [
        (upload(("notes.png", b"these are not pixels")), "notes.png: not a readable image"),
        (upload(("empty.png", b"")), "empty.png: empty file"),
        (upload(("huge.png", big.getvalue())), "huge.png: 10000×10000 pixels, over the limit"),
        (upload(("deep.png", sixteen)), "deep.png: a I;16 (16-bit) image"),
        (upload(*[("a.png", png_bytes(synthetic_xray()))] * 3), "3 files: a study has at most 2 views"),
        (upload(("a.png", png_bytes(synthetic_xray())), settings={"num_beams": 99}), "num_beams: 99 is outside"),
        ({"files": []}, "no image uploaded"),
        (b"{not json", "request is not JSON"),
    ]
    for payload, message in cases:
        status, answer = post(server["url"] + "/api/generate", payload)
        assert status == 400 and message in answer["error"], (message, answer)
    status, answer = post(server["url"] + "/api/generate", upload(("ok.png", png_bytes(synthetic_xray()))))
    assert status == 200 and answer["report"] and server["proc"].poll() is None


def test_a_browser_uploads_an_xray_reads_the_report_and_labels_and_picks_a_test_study(server, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: `make install` installs Debian's chromium")
        pytest.skip("no Chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    png = synthetic_xray(7)
    image = tmp_path / "frontal.png"
    image.write_bytes(png_bytes(png))
    (tmp_path / "notes.png").write_text("not an image")
    defaults = get(server["url"] + "/api/run")["defaults"]
    _, expected = post(server["url"] + "/api/generate", upload(("frontal.png", image.read_bytes()), settings=defaults))

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # CI runs as root
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(server["url"] + "/")
        page.wait_for_selector("#facts dd")
        assert "delta" in page.text_content("#facts") and page.input_value("#num-beams") == "2"
        page.set_input_files("#files", str(image))
        page.click("#generate")
        page.wait_for_function("document.getElementById('report').textContent.length > 0", timeout=120_000)
        assert page.text_content("#report") == expected["report"]
        chips = page.eval_on_selector_all("#labels .chip", "els => els.map(e => [e.dataset.label, e.dataset.value])")
        kinds = {1: "pos", -1: "unc", 0: "neg", None: "blank"}
        assert chips == [[name, kinds[value]] for name, value in expected["labels"].items()]

        page.select_option("#study", "s0032")
        page.click("#run-study")
        page.wait_for_function("document.getElementById('reference').textContent.length > 0", timeout=120_000)
        assert page.text_content("#reference") == reference(32)
        assert page.is_visible("#reference-block") and "ROUGE_L" in page.text_content("#scores")
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        if os.environ.get("R2G_SCREENSHOT"):  # how docs/serve.png is made
            shutil.copy(tmp_path / "serve.png", os.environ["R2G_SCREENSHOT"])

        page.set_input_files("#files", str(tmp_path / "notes.png"))
        page.click("#generate")
        page.wait_for_selector("#error:not(.hidden)", timeout=60_000)
        assert "notes.png: not a readable image" in page.text_content("#error")
        browser.close()


def test_nothing_is_written_and_uploads_are_not_kept(server):
    """Last in this file, so after every request above (pytest runs a file top to bottom)."""
    assert list(server["cwd"].iterdir()) == [] and list(server["tmp"].iterdir()) == []
    assert snapshot(server["run"]) == server["before"]
