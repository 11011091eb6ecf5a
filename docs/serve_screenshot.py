"""Make docs/serve.png: the page of ``lucidlm serve`` on a trained CEBaB run, after a review was
typed and a misread concept corrected. Needs the run (``make cebab`` or bench/) and Chromium.

    python docs/serve_screenshot.py [RUN_DIR] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from lucidlm.web.serve import load_app, serving

ROOT = Path(__file__).resolve().parents[1]
# A CEBaB test review the joint model reads with food Positive (label 3); its annotators say
# food Negative and 2 stars, and correcting food gives 2.
REVIEW = (
    "Second time visiting AG. Came back because food was great the first time, but not this time. "
    "Will not make a special trip to eat here again."
)
CORRECTION = ("food", "Negative")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=ROOT / "runs" / "bench-cebab-joint", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--output", default=ROOT / "docs" / "serve.png", type=Path)
    args = parser.parse_args()
    with serving(load_app(args.run_dir)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_selector("#run-info:not(:has-text('Loading'))")
        page.fill("#text", REVIEW)
        page.click("#predict")
        page.wait_for_selector("#tokens-section:not([hidden])", timeout=120_000)
        concept, value = CORRECTION
        page.select_option(f"select[data-concept='{concept}']", value)
        page.wait_for_selector("#compare-section:not([hidden])")
        page.screenshot(path=str(args.output), full_page=True)
        browser.close()
    shrink(args.output)
    print(f"wrote {args.output}")


def shrink(path: Path) -> None:
    """A page of flat colours loses nothing in a 256-colour palette, and the repository stays small."""
    try:
        from PIL import Image
    except ImportError:
        return
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


if __name__ == "__main__":
    main()
