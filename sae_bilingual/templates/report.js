// Feature browser for the sae-bilingual report. Plain JS, no network. All data text is
// inserted with textContent (never innerHTML), so tokens from user data cannot inject markup.
(function () {
  "use strict";
  var idxEl = document.getElementById("fb-index");
  var index = idxEl ? JSON.parse(idxEl.textContent) : [];
  var saeSel = document.getElementById("fb-sae");
  var clsSel = document.getElementById("fb-cls");
  var txt = document.getElementById("fb-text");
  var thead = document.querySelector("#fb-table thead");
  var tbody = document.querySelector("#fb-table tbody");
  var exBox = document.getElementById("fb-examples");
  var countEl = document.getElementById("fb-count");
  var cur = null, sortKey = null, sortDir = -1, selected = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v) {
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    return v === null || v === undefined ? "" : String(v);
  }
  function showTok(t) { return String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }

  index.forEach(function (s, i) {
    var o = el("option", null, s.label); o.value = String(i); saeSel.appendChild(o);
  });

  function load(i) {
    cur = JSON.parse(document.getElementById("fb-sae-" + i).textContent);
    sortKey = cur.default_sort; sortDir = -1; selected = null;
    while (clsSel.options.length > 1) clsSel.remove(1);
    cur.classes.forEach(function (c) { var o = el("option", null, c); o.value = c; clsSel.appendChild(o); });
    renderHead(); renderRows();
    var first = cur.rows.find(function (r) { return cur.examples[String(r[0])]; });
    exBox.textContent = "";
    exBox.appendChild(el("p", "meta", cur.summary));
    if (first) showFeature(first[0]);
  }

  function renderHead() {
    thead.textContent = "";
    var tr = el("tr");
    cur.columns.forEach(function (c) {
      var th = el("th", null, c + (c === sortKey ? (sortDir < 0 ? " \u25bc" : " \u25b2") : ""));
      th.title = "sort by " + c;
      th.addEventListener("click", function () {
        if (sortKey === c) sortDir = -sortDir; else { sortKey = c; sortDir = -1; }
        renderHead(); renderRows();
      });
      tr.appendChild(th);
    });
    thead.appendChild(tr);
  }

  function renderRows() {
    var k = cur.columns.indexOf(sortKey), cls = clsSel.value, q = txt.value.trim().toLowerCase();
    var ci = cur.columns.indexOf("class"), ti = cur.columns.indexOf("top tokens");
    var rows = cur.rows.filter(function (r) {
      if (cls && r[ci] !== cls) return false;
      if (!q) return true;
      return String(r[0]) === q || (ti >= 0 && String(r[ti]).toLowerCase().indexOf(q) >= 0);
    });
    if (k >= 0) rows.sort(function (a, b) {
      var x = a[k], y = b[k];
      if (typeof x === "number" && typeof y === "number") return sortDir * (x - y);
      return sortDir * String(x).localeCompare(String(y));
    });
    tbody.textContent = "";
    rows.forEach(function (r) {
      var tr = el("tr");
      tr.dataset.feature = String(r[0]);
      if (String(r[0]) === selected) tr.className = "sel";
      r.forEach(function (v, j) {
        var td = el("td", typeof v === "number" ? null : "txt", fmt(v));
        if (j === ci) td.className = "txt cls-" + v;
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { showFeature(r[0]); });
      tbody.appendChild(tr);
    });
    countEl.textContent = rows.length + " of " + cur.rows.length + " features shown";
  }

  function showFeature(f) {
    selected = String(f);
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      tr.className = tr.dataset.feature === selected ? "sel" : "";
    });
    exBox.textContent = "";
    var exs = cur.examples[selected] || [];
    var row = cur.rows.find(function (r) { return String(r[0]) === selected; });
    var h = el("h3", null, "feature " + selected + (row ? " \u2014 " + row[cur.columns.indexOf("class")] : ""));
    exBox.appendChild(h);
    if (!exs.length) { exBox.appendChild(el("p", "meta", "no stored examples for this feature")); return; }
    var scale = cur.max_act[selected] || Math.max.apply(null, exs.map(function (e) { return Math.max.apply(null, e.a.concat([1e-9])); }));
    exs.forEach(function (e) {
      var d = el("div", "ex");
      d.dataset.lang = e.lang;
      // Japanese (and other unsegmented scripts) join without spaces; spaced languages with them.
      var plain = "";
      d.appendChild(el("span", "exmeta", e.lang + " doc " + e.doc));
      e.t.forEach(function (t, j) {
        var s = el("span", "tok", showTok(t));
        var a = e.a[j] || 0, alpha = Math.max(0, Math.min(1, a / scale));
        if (a > 0) s.style.backgroundColor = "rgba(255,120,0," + alpha.toFixed(3) + ")";
        if (j === e.mp) s.style.outline = "1px solid #c05000";
        s.title = "act " + a.toFixed(3);
        d.appendChild(s);
        plain += t;
        if (cur.nospace.indexOf(e.lang) < 0 && j + 1 < e.t.length && !/^\s/.test(e.t[j + 1]) && !/\s$/.test(t)) {
          d.appendChild(document.createTextNode(" "));
          plain += " ";
        }
      });
      d.dataset.text = plain;  // the example as plain text, joined as displayed
      exBox.appendChild(d);
    });
  }

  saeSel.addEventListener("change", function () { load(Number(saeSel.value)); });
  clsSel.addEventListener("change", renderRows);
  txt.addEventListener("input", renderRows);
  // Deep link: report.html#sae=<i>&feature=<id> opens that SAE and feature.
  var hash = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("="); if (p.length === 2) hash[decodeURIComponent(p[0])] = decodeURIComponent(p[1]);
  });
  if (index.length) {
    // default: the entry the report marks (the final checkpoint's middle layer), else the first
    var si = hash.sae === undefined ? NaN : Number(hash.sae);
    var dflt = index.findIndex(function (s) { return s["default"] === true; });
    si = Number.isInteger(si) && si >= 0 && si < index.length ? si : Math.max(0, dflt);
    saeSel.value = String(si);
    load(si);
    if (hash.feature !== undefined) showFeature(hash.feature);
  }
  // report.html#only=browser shows just the feature browser (used for screenshots).
  if (hash.only === "browser") document.body.classList.add("only-browser");

  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    var nex = document.querySelectorAll("#fb-examples .ex").length;
    var rc = document.getElementById("render-check");
    rc.dataset.images = ok + "/" + imgs.length;
    rc.dataset.examples = String(nex);
    rc.dataset.saes = String(index.length);
    rc.dataset.status = (ok === imgs.length && (nex > 0 || !index.length)) ? "ok" : "fail";
    rc.dataset.feature = selected === null ? "" : selected;
    rc.dataset.sae = saeSel.value;
    document.body.dataset.ready = "1";
  });
})();
