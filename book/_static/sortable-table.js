// Sortable tables on the static site, with no kernel and nothing fetched: a click (or Enter) on a column header of
// a table with class "plugconv-sortable" sorts its rows by that column; a second click reverses the order. A cell
// sorts by its data-sort attribute when it has one (numbers as numbers); an empty data-sort ("-", not measured)
// always sorts last. Plain script, no AMD define(): it coexists with the vendored widget runtime's require.js.
(function () {
  "use strict";

  function sortKey(cell) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (raw === "") return { missing: true };
    var n = Number(raw);
    return isNaN(n) ? { text: raw.toLowerCase() } : { num: n };
  }

  function compare(a, b) {
    if ("num" in a && "num" in b) return a.num - b.num;
    if ("num" in a) return -1;
    if ("num" in b) return 1;
    return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  }

  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return { row: row, key: sortKey(row.cells[index]), i: i };
    });
    rows.sort(function (x, y) {
      if (x.key.missing || y.key.missing) return (x.key.missing - y.key.missing) || (x.i - y.i);
      return (ascending ? compare(x.key, y.key) : compare(y.key, x.key)) || (x.i - y.i);
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function init(table) {
    if (!table.tHead || !table.tBodies.length || table.getAttribute("data-sortable-ready")) return;
    table.setAttribute("data-sortable-ready", "1");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, index, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, index, th); }
      });
    });
  }

  function initAll() {
    Array.prototype.forEach.call(document.querySelectorAll("table.plugconv-sortable"), init);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", initAll);
  else initAll();
})();
