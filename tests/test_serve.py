"""`r2g serve` as a user meets it: the real command on 127.0.0.1 serving the demo's run (demo/runs/with-images,
as README shows it, when `make demo` has made it) or else a tiny 2-step run, asked over HTTP (the run's facts, an
upload, a DICOM, a study's folder, a test study, 20 requests at once, bad uploads) and used end to end by a headless
Chromium (Debian's, driven by Playwright): upload an X-ray, read the report and its label chips, drop a study's
folder and choose another, pick a test study, read its reference and scores. Nothing may be written outside the
server's temp folder."""

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
from .test_train import ROOT, _env, train

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SETTINGS = {"num_beams": 2, "max_new_tokens": 8}
DEMO_RUN = ROOT / "demo" / "runs" / "with-images"  # `make demo`'s run, the one README serves


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """(base URL, run folder, its test studies' references, the server's working and temp folders, its process):
    `r2g serve` on a port the OS picks, started from an empty folder with its own TMPDIR, serving the demo's run
    when there is one, else a tiny run trained here."""
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("serve")
    if (DEMO_RUN / "trainable.safetensors").is_file():
        run, annotation = DEMO_RUN, ROOT / "demo" / "data" / "annotation.json"
    else:
        assets = request.getfixturevalue("assets")
        run, annotation = root / "run", assets / "raw" / "annotation.json"
        train(assets, run, "--ds", "ds_configs/zero2.json", "--mode", "delta", "--max-steps", "2", "--val-every", "2",
              "--val-samples", "2")
    # The references as the shards should hold them: the annotation's raw reports, cleaned as the dataset's are.
    dataset = json.loads((run / "r2g_config.json").read_text())["data"]["dataset"]
    references = {e["id"]: clean_report(e["report"], dataset) for e in json.loads(annotation.read_text())["test"]}
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
    yield {"url": url, "run": run, "references": references, "cwd": cwd, "tmp": tmp, "proc": proc, "log": log,
           "before": before}
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


def upload(*files: tuple[str, bytes], settings=SETTINGS, folder: dict | None = None) -> dict:
    payload = {"files": [{"name": n, "data": base64.b64encode(d).decode()} for n, d in files], "settings": settings}
    return payload if folder is None else {**payload, "folder": folder}


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(png: np.ndarray) -> bytes:
    buf = io.BytesIO()
    radiograph_from_png(png).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study_ids(server) -> list[str]:
    return sorted(server["references"])


def test_the_header_shows_the_runs_facts_and_its_test_split(server):
    facts = get(server["url"] + "/api/run")
    cfg = json.loads((server["run"] / "r2g_config.json").read_text())
    best = json.loads((server["run"] / "best.json").read_text())
    assert facts["mode"] == "delta" and facts["llm_name"] == Path(cfg["model"]["llm"]).name
    assert facts["steps"] == cfg["train"]["max_steps"] == (300 if server["run"] == DEMO_RUN else 2)
    assert facts["device"] == "cpu" and facts["precision"] == "fp32" and facts["view_merge"] == "mean"
    assert facts["best"]["step"] == best["step"] and facts["best"]["scores"]["BLEU_4"] == best["scores"]["BLEU_4"]
    assert facts["defaults"] == {k: cfg["generate"][k] for k in ("num_beams", "max_new_tokens", "repetition_penalty")}
    if server["run"] != DEMO_RUN:
        assert facts["defaults"] == {"num_beams": 2, "max_new_tokens": 6, "repetition_penalty": 2.0}  # the run's own
    assert get(server["url"] + "/api/studies")["ids"] == study_ids(server)
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


def test_a_study_folder_gives_its_views_in_name_order_and_names_what_it_ignored(server):
    frontal, lateral = png_bytes(synthetic_xray(1)), png_bytes(synthetic_xray(2))
    apple_double = b"\x00\x05\x16\x07" + bytes(60)  # macOS's ._0.png beside 0.png on a shared drive
    folder = {"name": "CXR1_1_IM-0001", "subfolders": ["old"]}
    status, a = post(server["url"] + "/api/generate", upload(
        ("1.png", lateral), ("report.txt", b"FINDINGS: normal."), ("0.png", frontal), (".DS_Store", b"\0\0\0\1Bud1"),
        ("._0.png", apple_double), folder=folder))
    assert status == 200, a
    assert a["folder"] == {"name": "CXR1_1_IM-0001", "views": ["0.png", "1.png"],
                           "ignored": [".DS_Store", "._0.png", "report.txt", "old/"]}
    assert [s["file"] for s in a["sources"]] == ["0.png", "1.png"]
    _, b = post(server["url"] + "/api/generate", upload(("0.png", frontal), ("1.png", lateral)))
    assert a["report"] == b["report"]
    # A PACS export's DICOM without a suffix is a view by its content.
    status, c = post(server["url"] + "/api/generate", upload(("IM0001", dicom_bytes(synthetic_xray(1))),
                                                             ("README", b"exported"), folder={"name": "s1"}))
    assert status == 200 and c["folder"]["views"] == ["IM0001"] and c["folder"]["ignored"] == ["README"]
    assert c["sources"][0]["format"] == "dicom"


def test_a_test_study_comes_with_its_reference_and_scores(server):
    study = study_ids(server)[1]
    status, a = post(server["url"] + "/api/study", {"id": study, "settings": SETTINGS})
    assert status == 200 and a["study"]["reference"] == server["references"][study]
    assert set(a["study"]["scores"]) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L"}
    assert a["study"]["reference_labels"] == label_report(a["study"]["reference"])
    status, e = post(server["url"] + "/api/study", {"id": "s9999"})
    assert status == 400 and "s9999" in e["error"]


def test_twenty_requests_at_once_are_all_answered_one_at_a_time(server):
    png = synthetic_xray(5)
    jobs = [("/api/generate", upload((f"v{i}.png", png_bytes(np.roll(png, i, axis=1))))) if i % 2 else
            ("/api/study", {"id": study_ids(server)[i % 4], "settings": SETTINGS}) for i in range(20)]
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
        (upload(*[(f"{n}.jpg", png_bytes(synthetic_xray())) for n in "cab"], ("notes.txt", b"x"),
                folder={"name": "p10"}),
         "folder 'p10': 3 images (a.jpg, b.jpg, c.jpg) among its 4 files; a study's folder holds 1 to 2 views"),
        (upload(("notes.txt", b"x"), (".DS_Store", b"\0"), folder={"name": "s5", "subfolders": ["s6"]}),
         "folder 's5': 0 images among its 2 files"),
        (upload(("0.png", b"not pixels"), folder={"name": "s5"}), "0.png: not a readable image"),  # named, not skipped
        (upload(("0.png", png_bytes(synthetic_xray())), folder="s5"), "folder: must be"),
        (upload(("a.png", png_bytes(synthetic_xray())), settings={"num_beams": 99}), "num_beams: 99 is outside"),
        ({"files": []}, "no image uploaded"),
        (b"{not json", "request is not JSON"),
    ]
    for payload, message in cases:
        status, answer = post(server["url"] + "/api/generate", payload)
        assert status == 400 and message in answer["error"], (message, answer)
    status, answer = post(server["url"] + "/api/generate", upload(("ok.png", png_bytes(synthetic_xray()))))
    assert status == 200 and answer["report"] and server["proc"].poll() is None


KINDS = {1: "pos", -1: "unc", 0: "neg", None: "blank"}


def chips(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(selector + " .chip", "els => els.map(e => [e.dataset.label, e.dataset.value])")


def wait_text(page, element: str, needle: str) -> None:
    page.wait_for_function(f"document.getElementById({element!r}).textContent.includes({needle!r})", timeout=120_000)


def drop_folder(page, folder: Path) -> None:
    """Drag `folder` from the desktop onto the drop zone, through Chromium's input layer (Playwright's own drag
    moves things within a page only)."""
    box = page.locator("#drop").bounding_box()
    cdp = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(folder)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": box["x"] + 20, "y": box["y"] + 20, "data": data})
    cdp.detach()


def test_a_browser_uploads_an_xray_drops_a_folder_and_picks_a_test_study(server, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: `make install` installs Debian's chromium")
        pytest.skip("no Chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, frontal, lateral = server["url"], png_bytes(synthetic_xray(7)), png_bytes(synthetic_xray(8))
    (tmp_path / "frontal.png").write_bytes(frontal)
    (tmp_path / "notes.png").write_text("not an image")
    study = tmp_path / "CXR1_1_IM-0001"  # a study's folder as IU-Xray holds it, with what else folders collect
    (study / "old").mkdir(parents=True)
    for name, data in [("1.png", lateral), ("0.png", frontal), ("old/0.png", frontal), ("report.txt", b"normal"),
                       (".DS_Store", b"\0\0\0\1Bud1")]:
        (study / name).write_bytes(data)
    patient = tmp_path / "p10000032"  # a patient's folder: three images, not one study (and a study below)
    (patient / "s50414267").mkdir(parents=True)
    for name in ("c.jpg", "a.jpg", "b.jpg", "s50414267/d.jpg"):
        Image.fromarray(synthetic_xray()).save(patient / name, format="JPEG")
    defaults = get(url + "/api/run")["defaults"]
    picked = study_ids(server)[2]
    _, expected = post(url + "/api/generate", upload(("frontal.png", frontal), settings=defaults))
    _, expected_folder = post(url + "/api/generate", upload(("0.png", frontal), ("1.png", lateral), settings=defaults))
    _, expected_study = post(url + "/api/study", {"id": picked, "settings": defaults})

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # CI runs as root
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url + "/")
        page.wait_for_selector("#facts dd")
        assert "delta" in page.text_content("#facts") and page.input_value("#num-beams") == str(defaults["num_beams"])
        assert "order does not change the report" in page.text_content("#order-note")  # view_merge mean

        page.set_input_files("#files", str(tmp_path / "frontal.png"))
        page.click("#generate")
        page.wait_for_function("document.getElementById('report').textContent.length > 0", timeout=120_000)
        assert page.text_content("#report") == expected["report"]
        assert chips(page, "#labels") == [[name, KINDS[v]] for name, v in expected["labels"].items()]

        drop_folder(page, study)  # read through webkitGetAsEntry: its own files; the subfolder only named
        wait_text(page, "status", "folder CXR1_1_IM-0001 ready (4 files)")
        page.click("#generate")
        wait_text(page, "folder-read", "CXR1_1_IM-0001")
        assert page.text_content("#folder-read") == ("folder CXR1_1_IM-0001: views 0.png, 1.png (name order); "
                                                     "ignored: .DS_Store, report.txt, old/")
        assert page.text_content("#report") == expected_folder["report"]

        assert len(page.query_selector_all("#study option")) == len(server["references"])
        page.select_option("#study", picked)
        page.click("#run-study")
        page.wait_for_function("document.getElementById('reference').textContent.length > 0", timeout=120_000)
        reference = server["references"][picked]
        assert page.text_content("#reference") == reference and page.is_visible("#reference-block")
        assert page.text_content("#report") == expected_study["report"] and page.text_content("#folder-read") == ""
        assert chips(page, "#reference-labels") == [[n, KINDS[v]] for n, v in label_report(reference).items()]
        assert chips(page, "#labels") == [[n, KINDS[v]] for n, v in expected_study["labels"].items()]
        scores = page.text_content("#scores")
        assert all(f"{k}{v:.4f}" in scores for k, v in expected_study["study"]["scores"].items())
        assert f"CheXpert labels agreeing{expected_study['study']['labels_agree']} / 14" in scores
        if server["run"] == DEMO_RUN:  # the demo's model writes findings the labeler reads, as its references do
            assert {kind for _, kind in chips(page, "#labels")} - {"blank"}
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        if os.environ.get("R2G_SCREENSHOT"):  # how docs/serve.png is made
            shutil.copy(tmp_path / "serve.png", os.environ["R2G_SCREENSHOT"])

        page.set_input_files("#folder", str(patient))  # webkitdirectory: every file below it, the top level counted
        page.click("#generate")
        wait_text(page, "error", "folder 'p10000032': 3 images (a.jpg, b.jpg, c.jpg) among its 3 files")
        page.set_input_files("#files", str(tmp_path / "notes.png"))
        page.click("#generate")
        wait_text(page, "error", "notes.png: not a readable image")
        browser.close()
    assert server["proc"].poll() is None


def test_nothing_is_written_and_uploads_are_not_kept(server):
    """Last in this file, so after every request above (pytest runs a file top to bottom)."""
    assert list(server["cwd"].iterdir()) == []
    # Files only: importing torch._dynamo (timm → torchvision, when the run loads Swin weights) makes an empty
    # torchinductor_<user> cache folder in the temp folder, where the issue allows writes; no upload may be there.
    assert [p for p in server["tmp"].rglob("*") if not p.is_dir()] == []
    assert snapshot(server["run"]) == server["before"]
