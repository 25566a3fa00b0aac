"""Build the book (executing every notebook on the smoke profile) and check the built site in headless Chromium.

The build runs once per session into a temporary folder, with a fresh library cache, so every chapter's smoke
experiment really runs. Deselect with ``-m "not book"`` for a quick library-only run; set ``PLUGCONV_BUILT_SITE`` to
an already built ``_build/html`` folder to check that site instead of building one.
"""
import base64
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.book


def _toc_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [ch["file"] for ch in part["chapters"]]
    return pages


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    if os.environ.get("PLUGCONV_BUILT_SITE"):
        return Path(os.environ["PLUGCONV_BUILT_SITE"])
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, PLUGCONV_PROFILE="smoke", PLUGCONV_CACHE=str(out / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--path-output", str(out), "-W", "-n",
           "--keep-going"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2400)
    log = proc.stdout + proc.stderr
    (out / "build.log").write_text(log)
    EXECUTION_TIMES.update(execution_times(log))
    assert proc.returncode == 0, f"book build failed:\n{log[-6000:]}"
    return out / "_build" / "html"


EXECUTION_TIMES: dict = {}  # page -> seconds, filled by the build; printed by conftest's terminal summary
CHAPTER_BUDGET_S = 40  # chapter standard v2: a chapter executes in at most 40 s on the CI machine


def execution_times(log: str) -> dict:
    """{page: seconds} from myst-nb's "<path>.ipynb: Executed notebook in N seconds" lines of a build log."""
    times = {}
    for path, secs in re.findall(r"(\S+)\.ipynb: Executed notebook in ([0-9.]+) seconds", log):
        times[str(Path(path).relative_to(ROOT)) if Path(path).is_absolute() else path] = float(secs)
    return times


def test_chapters_execute_within_their_budget(site):
    if not EXECUTION_TIMES:
        pytest.skip("no build log (PLUGCONV_BUILT_SITE was given)")
    over = {p: t for p, t in EXECUTION_TIMES.items() if t > CHAPTER_BUDGET_S}
    assert not over, f"pages over the {CHAPTER_BUDGET_S} s execution budget: {over}"


def test_execution_times_are_read_from_the_build_log():
    log = (f"{ROOT}/chapters/01_se.ipynb: Executed notebook in 21.5 seconds [mystnb]\n"
           "book/testbed.ipynb: Executed notebook in 3.0 seconds [mystnb]\n")
    assert execution_times(log) == {"chapters/01_se": 21.5, "book/testbed": 3.0}


def test_every_toc_page_is_built(site):
    for page in _toc_pages():
        assert (site / f"{page}.html").is_file(), page


def test_every_page_sits_one_folder_down(site):
    """The widget runtime's relative paths (book/_static/widgets-config.js) assume it."""
    for page in _toc_pages():
        assert len(Path(page).parts) == 2, page


def test_chapters_show_the_smoke_banner_and_no_error_output(site):
    for page in _toc_pages():
        html = (site / f"{page}.html").read_text()
        assert "Traceback (most recent call last)" not in html, page
        if "chapter_report" in html:
            assert "SMOKE PROFILE" in html, page


def _explore_specs(html: str):
    """For each explore widget on a page: its sliders' option counts and a function mapping slider indices to the
    PNG bytes of the frame that should be visible (read from the embedded widget state)."""
    state = json.loads(re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>',
                                 html, re.S).group(1))["state"]
    views = [json.loads(v)["model_id"] for v in
             re.findall(r'<script type="application/vnd.jupyter.widget-view\+json">(.*?)</script>', html, re.S)]

    def ref(s):
        return s.replace("IPY_MODEL_", "")

    def png(model_id):
        for buf in state[model_id].get("buffers", []):
            if buf["path"] == ["value"]:
                return base64.b64decode(buf["data"])
        return None

    specs = []
    for vid in views:
        st = state[vid]["state"]
        if "plugconv-explore" not in st.get("_dom_classes", []):
            continue
        children = [ref(c) for c in st["children"]]
        sliders, stack = children[:-1], children[-1]
        sizes = [len(state[s]["state"]["_options_labels"]) for s in sliders]

        def frame(indices, stack=stack):
            node = stack
            for i in indices:
                node = ref(state[node]["state"]["children"][i])
            return png(node)

        specs.append((sizes, frame))
    return specs


@pytest.fixture(scope="session")
def server(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


VISIBLE_FRAME = """el => {
  const img = [...el.querySelectorAll('img')].find(i => i.offsetParent !== null);
  return fetch(img.src).then(r => r.arrayBuffer()).then(b => {
    let s = ''; new Uint8Array(b).forEach(c => s += String.fromCharCode(c)); return btoa(s); });
}"""


FRAME_SIZE = """el => {
  const img = [...el.querySelectorAll('img')].find(i => i.offsetParent !== null);
  return [img.naturalWidth, img.getBoundingClientRect().width, el.getBoundingClientRect().width];
}"""


def test_explore_widgets_work_without_a_kernel(site, server, browser):
    """On every page with an explore widget (in a 1280-px window): the frame is shown at its natural size, within
    the column, and moving each slider shows exactly the precomputed frame for the new slider values, with no kernel
    and no request leaving the machine."""
    pages = [p for p in _toc_pages() if "plugconv-explore" in (site / f"{p}.html").read_text()]
    assert pages, "no page has an explore widget"
    for page in pages:
        html = (site / f"{page}.html").read_text()
        specs = _explore_specs(html)
        context = browser.new_context(viewport={"width": 1280, "height": 900})  # the window the layout is for
        browser_page = context.new_page()
        outside, failed = [], []
        browser_page.on("request", lambda r: outside.append(r.url)
                        if not r.url.startswith(server) and not r.url.startswith(("blob:", "data:")) else None)
        browser_page.on("requestfailed", lambda r: failed.append(r.url))
        browser_page.goto(f"{server}/{page}.html")
        browser_page.wait_for_selector(".plugconv-explore .noUi-handle", timeout=30_000)
        widgets = browser_page.locator(".plugconv-explore")
        assert widgets.count() == len(specs), page
        for w, (sizes, frame) in enumerate(specs):
            el = widgets.nth(w)
            indices = [0] * len(sizes)
            assert base64.b64decode(el.evaluate(VISIBLE_FRAME)) == frame(indices), f"{page}: initial frame"
            natural, shown, column = el.evaluate(FRAME_SIZE)
            assert natural == round(shown) <= column, (
                f"{page}: a {natural}-px frame is shown {shown:.0f} px wide in a {column:.0f}-px column")
            for s, size in enumerate(sizes):
                if size < 2:
                    continue
                el.locator(".noUi-handle").nth(s).focus()
                browser_page.keyboard.press("ArrowRight")
                indices[s] += 1
                expected = frame(indices)
                browser_page.wait_for_function(
                    "([el, n]) => [...el.querySelectorAll('img')].filter(i => i.offsetParent !== null).length == n",
                    arg=[el.element_handle(), 1], timeout=5_000)
                assert base64.b64decode(el.evaluate(VISIBLE_FRAME)) == expected, f"{page}: slider {s}"
        assert not outside, f"{page} requested outside resources: {outside[:3]}"
        assert not [u for u in failed if not u.endswith("favicon.ico")], f"{page}: failed requests {failed[:3]}"
        context.close()


LAYOUT = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const right = article.getBoundingClientRect().right;
  const equations = [];
  for (const e of document.querySelectorAll('mjx-container[display="true"]')) {
    const m = (e.querySelector('mjx-math') || e).getBoundingClientRect();
    if (m.width > e.getBoundingClientRect().width + 1 || m.right > right + 1)
      equations.push(Math.round(m.width) + ' px: ' + (e.textContent || '').slice(0, 60));
  }
  const blocks = [...document.querySelectorAll(
    'div.cell div.cell_input div.highlight pre, div.cell_output pre, div.cell_output div.output.text_html')];
  const scrolling = blocks.filter(el => el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
    .map(el => el.scrollWidth + ' > ' + el.clientWidth + ' px: ' + (el.textContent || '').trim().slice(0, 60));
  const shrunk = [...document.querySelectorAll('article img')]
    .filter(im => im.naturalWidth && im.offsetParent !== null
                  && im.getBoundingClientRect().width < 0.9 * im.naturalWidth)
    .map(im => Math.round(im.getBoundingClientRect().width) + ' of ' + im.naturalWidth + ' px');
  return {equations, blocks: blocks.length, scrolling, shrunk};
}"""


def test_pages_fit_the_column_at_1280_px(site, server, browser):
    """Chapter standard v2's layout rule, read in Chromium at 1280 px: no display equation wider than the column,
    at most one code/output block in ten scrolling sideways, no figure or widget frame shrunk to fit (a frame is
    drawn at the size it is shown, so its text keeps its size). No script on any page throws (a duplicated inline
    script, e.g. sphinx-thebe's ``const THEBE_JS_URL``, used to throw a SyntaxError on every page)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    problems = []
    for page in _toc_pages():
        p = context.new_page()
        thrown = []
        p.on("pageerror", lambda e, thrown=thrown: thrown.append(str(e)[:160]))
        p.goto(f"{server}/{page}.html")
        if p.evaluate("document.querySelectorAll('div.math, span.math').length") > 0:
            p.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
            p.evaluate("MathJax.startup.promise.then(() => true)")
        found = p.evaluate(LAYOUT)
        if thrown:
            problems.append(f"{page}: scripts threw: {thrown}")
        if found["equations"]:
            problems.append(f"{page}: display equations wider than the column: {found['equations']}")
        if len(found["scrolling"]) * 10 > found["blocks"]:
            problems.append(f"{page}: {len(found['scrolling'])} of {found['blocks']} code/output blocks scroll "
                            f"sideways (at most one in ten may): {found['scrolling'][:4]}")
        if found["shrunk"]:
            problems.append(f"{page}: images shrunk to fit the column (draw them at most ~680 px wide): "
                            f"{found['shrunk']}")
        p.close()
    context.close()
    assert not problems, "\n".join(problems)


def test_leaderboard_page_loads_its_sortable_table_script(site):
    """The leaderboard's table sorts on the static site through a script of ours, served from _static (no CDN);
    tests/test_leaderboard.py checks the sorting itself beside the widget runtime."""
    html = (site / "book" / "leaderboard.html").read_text()
    assert re.search(r'<script src="\.\./_static/sortable-table\.js(\?[^"]*)?"', html)
    assert re.search(r'href="\.\./_static/leaderboard\.css(\?[^"]*)?"', html)
    assert (site / "_static" / "sortable-table.js").is_file()
