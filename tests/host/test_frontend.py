"""Every shipped workflow as a user opens it: ComfyUI's own frontend in headless Chromium (Debian's ``chromium``
driven by the ``playwright`` package; no browser is downloaded), the workflow file dropped on the page.

Per workflow it counts what a user would trip over and prints the figures: node types the frontend does not
know, overlapping nodes at the frontend's real node sizes, node titles not visible on open (off screen or
under the menu), the zoom on open (below the frontend's low-quality threshold nodes are drawn without
text), differences between what the frontend would queue (``graphToPrompt``) and the API twin,
a missing template thumbnail, and console errors that name the pack. Skipped without Chromium or playwright.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from spdinv_pack.tools.comfy_server import DEFAULT_PACK_NAME
from spdinv_pack.tools.workflow_api import api_twin, shipped_workflows

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright package")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="the browser test needs Chromium (Debian: chromium)")

WORKFLOWS = shipped_workflows()
VIEWPORT = {"width": 1920, "height": 1080}
"""A common desktop screen."""

MEASURE = """async () => {
    const app = window.app, canvas = app.canvas, ds = canvas.ds;
    const element = canvas.canvas, box = element.getBoundingClientRect();
    const nodes = app.graph._nodes;
    const bounds = nodes.map(n => { const b = new Float32Array(4); n.getBounding(b); return Array.from(b); });
    let overlaps = [];
    for (let i = 0; i < nodes.length; i++)
        for (let j = i + 1; j < nodes.length; j++) {
            const [a, b] = [bounds[i], bounds[j]];
            if (a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3])
                overlaps.push([nodes[i].title, nodes[j].title]);
        }
    const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
    const hidden = [];
    for (const n of nodes) {
        const [cx, cy] = ds.convertOffsetToCanvas([n.pos[0] + Math.min(n.size[0] / 2, 60), n.pos[1] - titleHeight / 2]);
        const x = box.left + cx / (window.devicePixelRatio || 1), y = box.top + cy / (window.devicePixelRatio || 1);
        const inside = x >= 0 && y >= 0 && x < window.innerWidth && y < window.innerHeight;
        if (!inside || document.elementFromPoint(x, y) !== element) hidden.push(n.title);
    }
    const unknown = nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
    const output = (await app.graphToPrompt()).output;
    const refused = [...document.querySelectorAll('body *')].filter(e => e.children.length === 0
        && /Invalid workflow|missing node types/i.test(e.textContent || '')).map(e => e.textContent.slice(0, 200));
    return {overlaps, hidden, unknown, output, refused, count: nodes.length, scale: ds.scale,
            lowQuality: canvas.low_quality_zoom_threshold ?? 0.6};
}"""


def strip(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(server, browser):
    """A fresh page on the server's frontend (notices of one workflow cannot cover another's nodes);
    ``page.pack_errors`` collects, from the end of start-up, console errors that name the pack and page
    errors."""
    tab = browser.new_page(viewport=VIEWPORT)
    tab.pack_errors = []

    def on_console(message):
        if message.type == "error" and "spdinv" in message.text.lower():
            tab.pack_errors.append(message.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: tab.pack_errors.append(str(error)))
    tab.goto(server.url)
    tab.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=180_000)
    time.sleep(2)
    tab.keyboard.press("Escape")
    tab.pack_errors.clear()  # the frontend's own start-up errors are not the workflow's
    yield tab
    tab.close()


def drop(page, path: Path, nodes: int) -> None:
    """Drop the file on the page as a user drags it from the file manager, and wait until it is the graph."""
    page.evaluate("""([name, text]) => {
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type: 'application/json'}));
        document.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", [path.name, path.read_text()])
    page.wait_for_function(f"window.app.graph._nodes.length === {nodes}", timeout=60_000)
    time.sleep(1.5)
    page.keyboard.press("Escape")
    time.sleep(0.5)


def thumbnail_found(server, stem: str) -> bool:
    url = f"{server.url}/api/workflow_templates/{DEFAULT_PACK_NAME}/{urllib.parse.quote(stem)}.jpg"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("ui_path", WORKFLOWS, ids=lambda p: p.stem)
def test_the_workflow_opens_cleanly_in_the_frontend(server, page, ui_path, tmp_path_factory):
    workflow = json.loads(ui_path.read_text())
    twin = json.loads(api_twin(ui_path).read_text())
    drop(page, ui_path, len(workflow["nodes"]))
    seen = page.evaluate(MEASURE)
    queued, expected = strip(seen["output"]), strip(twin)
    differences = sorted(k for k in set(queued) | set(expected) if queued.get(k) != expected.get(k))
    thumbnail = thumbnail_found(server, ui_path.stem)
    errors = page.pack_errors
    shots = tmp_path_factory.mktemp("frontend")
    page.screenshot(path=str(shots / f"{ui_path.stem}.png"))
    print(f"\n[frontend] {ui_path.stem}: {seen['count']} nodes, overlaps {len(seen['overlaps'])}, hidden titles "
          f"{len(seen['hidden'])}, twin differences {len(differences)}, missing thumbnails {int(not thumbnail)}, "
          f"pack console errors {len(errors)}, unknown node types {len(seen['unknown'])}, schema/missing-node "
          f"notices {len(seen['refused'])}, zoom {seen['scale']:.2f}; "
          f"screenshot "
          f"{shots / ui_path.stem}.png")
    assert seen["unknown"] == []
    assert seen["refused"] == [], "the frontend reported the file invalid or node types missing"
    assert differences == [], {k: (queued.get(k), expected.get(k)) for k in differences}
    assert errors == []
    assert seen["overlaps"] == []
    assert seen["hidden"] == []
    assert seen["scale"] >= seen["lowQuality"], "below this zoom the frontend draws the nodes without text"
    assert thumbnail, f"no {ui_path.stem}.jpg beside the workflow: the template browser shows an empty card"
