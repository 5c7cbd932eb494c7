"""``convattn report`` and ``convattn cam``: the HTML page (checked in a real browser) and
the Grad-CAM grid of image files, on two tiny trained runs."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convattn.cli import main
from convattn.engine import fit, load_config
from convattn.report import build_report

MODELS = ("cifar_resnet20", "cifar_resnet20_cbam")


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


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is missing")
    return path


@pytest.mark.slow
def test_the_page_renders_in_chromium_without_network_on_a_phone_and_a_desktop(page, tmp_path):
    from playwright.sync_api import sync_playwright

    left = []
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=flags)
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
                assert tab.evaluate("document.querySelectorAll('table').length") == 2
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
    root.mkdir()
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


def test_report_of_a_folder_that_is_no_run_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
