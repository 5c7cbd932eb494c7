"""``convattn report`` and ``convattn cam``: the HTML page (checked in a real browser) and
the Grad-CAM grid of image files, on two tiny trained classification runs and two tiny
detection runs."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.cli import main
from convattn.commands.cam import folder_targets
from convattn.detection.config import DetectionConfig
from convattn.detection.draw import COLOURS
from convattn.detection.engine import fit_detection
from convattn.engine import fit, load_config
from convattn.report import build_report, detection_rows, read_detection_run
from convattn.report.detection import sample_images

MODELS = ("cifar_resnet20", "cifar_resnet20_cbam")
DET_MODELS = ("resnet18", "resnet18_cbam")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("runs")
    for model in MODELS:
        over = {"model": model, "data.path": "synthetic:train=64,val=64", "data.batch_size": 16,
                "data.workers": 0, "schedule.epochs": 2, "run.max_steps": 2, "optim.lr": 0.05,
                "run.output": str(out), "run.name": model, "run.progress": False}  # fmt: skip
        fit(load_config(None, over))
    return [out / m for m in MODELS]


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> Path:
    return build_report(runs, tmp_path_factory.mktemp("report") / "report.html", samples=32)


@pytest.fixture(scope="module")
def det_runs(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("det_runs")
    for model in DET_MODELS:
        over = {"model": model, "detector.min_size": 64, "detector.max_size": 64,
                "detector.fpn_channels": 16, "detector.representation_size": 32,
                "data.path": "synthetic:train=8,val=4,img_size=64", "data.batch_size": 2,
                "schedule.epochs": 1, "optim.lr": 0.01, "run.output": str(out),
                "run.name": model, "run.progress": False}  # fmt: skip
        fit_detection(load_config(None, over, cls=DetectionConfig))
    return [out / m for m in DET_MODELS]


@pytest.fixture(scope="module")
def mixed_page(runs, det_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "report.html"
    return build_report([*runs, *det_runs], out, images=3, samples=32)


class _Parts(HTMLParser):
    """The page's images (attributes), tables (rows of cell texts) and link targets."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.tables: list[list[list[str]]] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        self.links += [v for k, v in attrs if k in ("href", "src") and v]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parts(path: Path) -> _Parts:
    p = _Parts()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_the_page_is_self_contained_with_tables_and_described_pictures(page, runs):
    parts = _parts(page)
    assert all(link.startswith("data:image/png;base64,") for link in parts.links)
    # Curves, the Grad-CAM grid and the CBAM run's spatial maps, each described.
    assert len(parts.images) == 3 and all(img.get("alt") for img in parts.images)
    summary, localisation = parts.tables  # the Table-4 summary and the scores
    assert summary[0][:2] == ["run", "model"] and [r[0] for r in summary[1:]] == list(MODELS)
    for row, run in zip(summary[1:], runs, strict=True):
        want = json.loads((run / "summary.json").read_text())[0]
        assert row[2] == f"{want['params_m']:.2f}" and row[4] == f"{want['top1_err']:.2f}"
    assert [r[0] for r in localisation[1:]] == list(MODELS)
    for row in localisation[1:]:
        assert all(0 <= float(v) <= 100 for v in row[1:])


def _png(img: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))


def test_detection_runs_get_the_map_table_ap_per_class_and_boxes(det_runs, tmp_path):
    parts = _parts(build_report(det_runs, tmp_path / "det.html", images=3))
    assert all(link.startswith("data:image/png;base64,") for link in parts.links)
    summary, per_class = parts.tables
    head = summary[0]
    assert head[:3] == ["run", "backbone", "detector"] and "VOC07 mAP" in head
    for row, run in zip(summary[1:], det_runs, strict=True):
        want = json.loads((run / "summary.json").read_text())[0]
        assert row[0] == run.name and row[1] == want["model"]
        assert row[head.index("mAP")] == f"{want['map']:.1f}"
        assert row[head.index("VOC07 mAP")] == f"{want['voc07_map']:.1f}"
    assert per_class[0] == ["class", *DET_MODELS]
    classes = json.loads((det_runs[0] / "dataset.json").read_text())["classes"]
    assert [r[0] for r in per_class[1:]] == classes
    for j, run in enumerate(det_runs, start=1):
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        for row in per_class[1:]:
            ap = last["val_ap_per_class"][row[0]]
            assert row[j] == ("-" if ap is None else f"{ap:.1f}")
    (boxes,) = parts.images  # ground truth and both runs on three images
    assert (
        all(name in boxes["alt"] for name in DET_MODELS) and "3 evaluation images" in boxes["alt"]
    )
    width, height = _png(boxes).size
    assert height > 0.8 * width  # three rows of three pictures


def test_the_ground_truth_row_outlines_each_object_in_its_class_colour(det_runs):
    view = read_detection_run(det_runs[0])
    rows = detection_rows([view], 2, seed=1, score_thresh=1.01)  # no detection drawn
    assert [name for name, _ in rows] == ["ground truth", view.name]
    images, targets = sample_images(view, 2, seed=1)
    k = 3  # 64 px images are drawn at 192 px
    for truth, pred, image, target in zip(rows[0][1], rows[1][1], images, targets, strict=True):
        raw = (image * 255).round().byte()
        assert torch.equal(pred[:, ::k, ::k], raw)  # nothing scores above 1.01
        assert truth.shape == (3, 192, 192)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = (round(k * v) for v in box)
            rgb = bytes.fromhex(COLOURS[(label - 1) % len(COLOURS)][1:])
            row = y2 if y2 < truth.shape[1] else y1  # the lower edge, unless off the image
            assert truth[:, row, (x1 + x2) // 2].tolist() == list(rgb), (box, label)


def test_a_page_of_both_kinds_has_both_parts(mixed_page):
    parts = _parts(mixed_page)
    assert len(parts.tables) == 4  # Table 4, localisation, mAP, AP per class
    assert len(parts.images) == 4  # curves, Grad-CAM, CBAM maps, boxes
    text = mixed_page.read_text(encoding="utf-8")
    assert all(name in text for name in (*MODELS, *DET_MODELS))


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is missing")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("which", "tables"), [("page", 2), ("mixed_page", 4)])
def test_the_page_renders_in_chromium_without_network_on_a_phone_and_a_desktop(
    which, tables, request, tmp_path
):
    from playwright.sync_api import sync_playwright

    path = _chromium()
    page = request.getfixturevalue(which)
    left = []
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=flags)
        try:
            for width, height in ((390, 844), (1280, 900)):
                view = browser.new_context(viewport={"width": width, "height": height})
                tab = view.new_page()

                def block(route, left=left):  # only the page itself may load
                    url = route.request.url
                    if url.startswith(("file:", "data:")):
                        return route.continue_()
                    left.append(url)
                    return route.abort()

                tab.route("**/*", block)
                tab.goto(page.as_uri())
                sizes = tab.evaluate(
                    "[...document.images].map(i => [i.naturalWidth, i.naturalHeight])"
                )
                assert sizes and all(w > 0 and h > 0 for w, h in sizes)
                assert tab.evaluate("document.querySelectorAll('table').length") == tables
                # Nothing wider than the window but the scrolling boxes made for it.
                assert tab.evaluate("document.documentElement.scrollWidth") <= width
                shot = tmp_path / f"page-{width}.png"
                tab.screenshot(path=str(shot), full_page=True)
                assert Image.open(shot).size[0] == width
                view.close()
        finally:
            browser.close()
    assert left == []


def _image_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_cam_draws_the_grid_of_two_models_on_image_files(runs, tmp_path, capsys):
    images, out = _image_folder(tmp_path / "images"), tmp_path / "cam.png"
    argv = ["cam", str(images), "--model", MODELS[1], "--checkpoint", str(runs[1]),
            "--compare", MODELS[0], "--checkpoint2", str(runs[0]), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "3 images, 2 models" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert width > 300 and height > 300  # three images across, input and two models down


@pytest.mark.parametrize("case", ["undecodable", "empty folder", "weights of another model"])
def test_cam_refuses_bad_input_in_one_line_naming_the_file(runs, tmp_path, capsys, case):
    args = [str(_image_folder(tmp_path / "images"))]
    model, ckpt = MODELS[1], runs[1]
    if case == "undecodable":
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"not an image")
        args, named = [str(bad)], "broken.jpg"
    elif case == "empty folder":
        (tmp_path / "none").mkdir()
        args, named = [str(tmp_path / "none")], "none"
    else:
        model, ckpt, named = MODELS[1], runs[0] / "best.safetensors", "best.safetensors"
    argv = [
        "cam",
        *args,
        "--model",
        model,
        "--checkpoint",
        str(ckpt),
        "-o",
        str(tmp_path / "o.png"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


def test_cam_explains_each_images_true_class_named_by_its_folder(runs, tmp_path, capsys):
    classes = json.loads((runs[1] / "dataset.json").read_text())["classes"]
    assert folder_targets(classes, [Path(classes[2]) / "a.png", Path(classes[0]) / "b.png"]) == [
        2,
        0,
    ]
    images = _image_folder(tmp_path / "images" / classes[1])
    argv = ["cam", str(images), "--model", MODELS[1], "--checkpoint", str(runs[1]),
            "--target", "folder", "-o", str(tmp_path / "cam.png")]  # fmt: skip
    assert main(argv) == 0 and (tmp_path / "cam.png").stat().st_size > 10_000
    stray = _image_folder(tmp_path / "stray")
    assert main([*argv[:1], str(stray), *argv[2:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its folder 'stray' is not a class" in err, err


def test_report_of_a_folder_that_is_no_run_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
