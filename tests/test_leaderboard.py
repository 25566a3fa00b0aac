"""The leaderboard's builders (library functions) on synthetic records in a temporary store, and its sortable
table in headless Chromium beside the vendored widget runtime."""
import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from fake_records import latency_record, pack, record

from plugconv_lite import leaderboard, results

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "book" / "_static"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store filled through import-results, as the real one is."""
    monkeypatch.setenv("PLUGCONV_RESULTS", str(tmp_path / "results"))
    recs = [record("baseline", s, t) for s, t in enumerate([70.0, 70.5, 71.0])]
    recs += [record("se", s, t, model_kw={"attn": "se"}) for s, t in enumerate([72.0, 72.5, 73.0])]
    recs += [record("worse", s, t, model_kw={"conv": "c2sp"}) for s, t in enumerate([60.0, 60.5, 61.0])]
    recs += [record("c2sp", s, t, model_kw={"conv": "c2sp", "width_mult": 1.5}) for s, t in enumerate([69.0, 71.0])]
    recs += [record("pyconv", 0, 75.0, model_kw={"conv": "pyconv"}, concurrency=1, latency_ms=2.0)]
    lat = [latency_record("baseline", b1=1.0, b256=30.0), latency_record("se", model_kw={"attn": "se"}, b1=1.4, b256=33.0),
           latency_record("c2sp", model_kw={"conv": "c2sp", "width_mult": 1.5}, b1=0.9, b256=20.0)]
    report = results.import_packs([results.write_pack(pack(recs, latency=lat), tmp_path / "p.json.gz")])
    assert not report["refused"]
    return tmp_path / "results"


@pytest.fixture
def board(store):
    return leaderboard.board(results.load(store, profile="full"), results.load_latency(store, profile="full"))


def test_board_decides_by_the_interval_and_marks_provisional_rows(board):
    rows = board.set_index("variant")
    assert list(board.variant) == ["baseline", "pyconv", "se", "c2sp", "worse"]  # baseline, then by Δ
    assert rows.loc["se", "decision"] == "better" and rows.loc["se", "delta_top1"] == pytest.approx(2.0)
    assert rows.loc["worse", "decision"] == "worse"
    assert rows.loc["c2sp", "decision"] == "not resolved" and rows.loc["c2sp", "provisional"]
    assert rows.loc["pyconv", "decision"] == "no interval" and rows.loc["pyconv", "provisional"]
    assert not rows.loc["se", "provisional"] and rows.loc["se", "ci"] == "[+0.87, +3.13]"
    assert rows.loc["baseline", "ci"] == "-" and rows.loc["se", "chapters"] == "se"
    assert "1 better and 1 worse" in leaderboard.summary(board) and "NVIDIA H200" in leaderboard.summary(board)


def test_latency_comes_from_gpu_to_itself_timings_only(board):
    rows = board.set_index("variant")
    assert rows.loc["se", "latency_b1_ms"] == 1.4 and rows.loc["se", "latency_source"] == "alone"
    assert rows.loc["pyconv", "latency_b1_ms"] == 2.0 and rows.loc["pyconv", "latency_source"] == "in run"  # alone
    assert rows.loc["worse", "latency_b1_ms"] != rows.loc["worse", "latency_b1_ms"]  # NaN: ran shared, not timed


def test_pareto_front_keeps_the_rows_nothing_beats(board):
    front = set(board[leaderboard.pareto_front(board, "latency_b1_ms")].variant)
    assert front == {"c2sp", "baseline", "se", "pyconv"}  # only "worse" is beaten (it has no latency: left out)
    trade = board.assign(latency_b1_ms=[1.0, 2.0, 1.4, 0.9, 0.95])
    assert not leaderboard.pareto_front(trade, "latency_b1_ms")[4]  # slower than c2sp and less accurate
    fig = leaderboard.pareto_figure(board)
    try:
        assert len(fig.axes) == 2 and fig.axes[0].get_xlabel().startswith("GPU latency, batch 1")
        assert [t.get_text() for t in fig.axes[0].texts] == list(board[board.latency_b1_ms.notna()].variant)
    finally:
        plt.close(fig)


def test_html_table_sort_keys_marks_and_missing_values(board):
    html = leaderboard.html_table(board)
    assert html.count("<tr") == len(board) + 1 and 'class="plugconv-sortable' in html
    se = re.search(r'<tr class="decision-better">(.*?)</tr>', html).group(1)
    assert '<td data-sort="2.0">+2.00</td>' in se and "▲ better" in se
    pyconv = re.search(r'<tr class="decision-no-interval provisional">(.*?)</tr>', html).group(1)
    assert '<td data-sort="1.0">1*</td>' in pyconv and "* provisional: fewer than 3 seeds" in html
    assert '<td data-sort="">-</td>' in html  # missing values sort last


def test_an_empty_store_says_so_and_gives_the_commands(tmp_path):
    b = leaderboard.board(results.load(tmp_path), results.load_latency(tmp_path))
    assert b.empty and "latency_b1_ms" in b.columns
    msg = leaderboard.empty_message()
    assert "decides nothing" in msg and "campaign --budget" in msg and "import-results" in msg and "--list" in msg


def test_table_sorts_in_the_browser_beside_the_widget_runtime(board, tmp_path, browser):
    """The page loads the vendored widget runtime (require.js, its config, embed-amd.js) and our script, as the
    built site does; header clicks sort, missing values stay last, and nothing is fetched from elsewhere."""
    site = tmp_path / "site"
    shutil.copytree(STATIC, site / "_static")
    scripts = "".join(f'<script src="_static/{s}"></script>' for s in
                      ("require.js", "widgets-config.js", "embed-amd.js", "sortable-table.js"))
    (site / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'>{scripts}</head>"
                                     f"<body>{leaderboard.html_table(board)}</body></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    page = browser.new_page()
    errors, outside = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
    try:
        page.goto(f"{url}/index.html")
        page.wait_for_selector("table.plugconv-sortable[data-sortable-ready]")

        def column(i):
            return page.eval_on_selector_all("tbody tr", f"rows => rows.map(r => r.cells[{i}].textContent)")

        headers = page.locator("thead th")
        headers.nth(3).click()  # Δ top-1, ascending
        assert column(0) == ["worse", "c2sp", "baseline", "se", "pyconv"]
        headers.nth(3).click()
        assert column(0) == ["pyconv", "se", "baseline", "c2sp", "worse"]
        assert headers.nth(3).get_attribute("aria-sort") == "descending"
        headers.nth(8).click()  # latency at batch 1: the rows without one stay last in either order
        assert column(8) == ["0.900", "1.000", "1.400", "2.000", "-"]
        headers.nth(8).click()
        assert column(8) == ["2.000", "1.400", "1.000", "0.900", "-"]
        headers.nth(0).focus()
        page.keyboard.press("Enter")
        assert column(0) == sorted(column(0))
        assert page.evaluate("typeof require === 'function' && typeof define === 'function'")  # runtime intact
        assert not errors, errors
        assert not outside, outside
    finally:
        page.close()
        srv.shutdown()


def test_coverage_lists_every_chapter_with_its_runs_and_the_variants_missing_a_seed(store):
    from plugconv_lite.experiments import BASELINE, EXPERIMENTS

    cov = leaderboard.coverage("full", store)
    assert set(cov.index) == {c for c, vs in EXPERIMENTS.items() if any(v is not BASELINE for v in vs)}
    # the Sandglass chapter's own MobileNetV2 baseline is planned with it (not the book's shared ResNet baseline)
    assert "baseline" in cov.loc["sandglass"].missing.split(", ") and cov.loc["sandglass"].variants == 3
    assert cov.loc["se", ["runs", "planned", "missing"]].tolist() == [3, 3, "-"]  # se seeds 0-2 are in the store
    assert cov.loc["c2sp"].runs == 2 and "c2sp" in cov.loc["c2sp"].missing.split(", ")  # seed 2 is missing
    dgc = cov.loc["dgc"]  # a chapter nothing ran for is listed, with every variant missing
    assert dgc.runs == 0 and dgc.planned == 3 * len(dgc.missing.split(", "))
