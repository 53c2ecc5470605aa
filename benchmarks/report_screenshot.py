"""The README's picture of a report: docs/images/report.png.

Builds the demo's history (5001 x 128 x 64 bf16, ``dask-pdist synth``), its distance store,
clusters and neighbours, writes the report with ``dask-pdist report``, opens it in headless
Chromium (Playwright with the system's executable) and saves a screenshot reduced to a
256-colour PNG (under 300 KB). Run by hand when the page changes:

    python benchmarks/report_screenshot.py [--output docs/images/report.png] [--steps 5001]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _run(work: Path, *argv: str) -> None:
    # in the work folder with relative names, so the page names the files as a user's would
    subprocess.run([sys.executable, "-m", "dask_pdist", *argv], check=True, stdout=subprocess.DEVNULL, cwd=work)


def make_report(work: Path, steps: int) -> Path:
    """The demo's history, store, clusters and neighbours, and their report (the CLI's commands)."""
    history, store = "embedding_evolution.safetensors", "pairwise_distances.zarr"
    _run(work, "synth", history, "--steps", str(steps))
    _run(work, "compute", history, "-o", store, "--no-progress")
    _run(work, "clusters", store, "-o", "clusters.zarr", "--no-progress")
    _run(work, "neighbours", history, "-k", "10", "-o", "neighbours.zarr", "--no-progress")
    _run(work, "report", store, "--clusters", "clusters.zarr", "--neighbours", "neighbours.zarr", "-o", "report.html")
    return work / "report.html"


def screenshot(page: Path, output: Path, width: int = 1200, limit: int = 300_000) -> int:
    """A full-page PNG of ``page``, quantized to 256 colours; returns its size in bytes."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    executable = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if executable is None:
        raise SystemExit(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    raw = output.with_suffix(".raw.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": width, "height": 1000})
        tab.goto(page.as_uri())
        tab.wait_for_selector(".main-svg .heatmaplayer image", timeout=60_000)
        tab.wait_for_timeout(500)
        tab.screenshot(path=str(raw), full_page=True)
        browser.close()
    image = Image.open(raw).convert("RGB")
    raw.unlink()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(output, optimize=True)
    size = output.stat().st_size
    if size > limit:
        raise SystemExit(f"{output}: {size:,} bytes, more than {limit:,}; use a narrower --width")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "report.png")
    parser.add_argument("--steps", type=int, default=5001, help="steps of the synthetic history (default: 5001)")
    parser.add_argument("--width", type=int, default=1200, help="browser width in pixels (default: 1200)")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dask_pdist-report-") as work:
        page = make_report(Path(work), args.steps)
        print(f"report: {page.stat().st_size / 1e6:.1f} MB")
        size = screenshot(page, args.output, args.width)
    print(f"Wrote {args.output} ({size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
