/* websmsd conversations: live updates and the reply box's SMS counter.
   No framework, nothing from elsewhere (the page's Content-Security-Policy allows
   scripts from this listener only).  The pages work without it. */
(function () {
  "use strict";

  // -- the SMS counter: counts as websmsd.sms.segments does --------------------------
  // GSM 03.38: every character in the default alphabet or its extension table (which
  // costs 2 septets) gives 160 septets in one SMS, 153 per part of a long one; any
  // other character makes the whole text UCS-2: 70 units, 67 per part, 2 per emoji.
  function counter(area) {
    var basic = area.getAttribute("data-gsm") || "";
    var ext = area.getAttribute("data-gsm-ext") || "";
    var out = document.getElementById(area.getAttribute("aria-describedby"));
    if (!out) { return; }
    function units(text, gsm) {
      var list = [];
      for (var ch of text) {
        if (gsm) { list.push(ext.indexOf(ch) >= 0 ? 2 : 1); }
        else { list.push(ch.codePointAt(0) > 0xFFFF ? 2 : 1); }
      }
      return list;
    }
    function count() {
      var text = area.value.replace(/\r\n/g, "\n");
      if (!text) {
        out.textContent = "GSM 7-bit \u00b7 160 characters per SMS";
        return;
      }
      var gsm = true;
      for (var ch of text) {
        if (basic.indexOf(ch) < 0 && ext.indexOf(ch) < 0) { gsm = false; break; }
      }
      var list = units(text, gsm);
      var single = gsm ? 160 : 70, multi = gsm ? 153 : 67;
      var total = list.reduce(function (a, b) { return a + b; }, 0);
      var limit = total <= single ? single : multi;
      var parts = 1, used = 0;
      for (var i = 0; i < list.length; i++) {
        if (used + list[i] > limit) { parts += 1; used = 0; }
        used += list[i];
      }
      out.textContent = parts + " SMS \u00b7 " + (gsm ? "GSM 7-bit" : "UCS-2 (Unicode)") +
        " \u00b7 " + (limit - used) + " left";
    }
    area.addEventListener("input", count);
    count();
  }
  document.querySelectorAll("textarea[data-gsm]").forEach(counter);

  // -- live updates: what the server says changed replaces the part marked
  // data-updates; the server answers 204 at no cost when nothing was committed. -----
  var live = document.querySelector("[data-updates]");
  // An older page (paged back) is not live: its updates would be the newest SMS.
  var url = live ? live.getAttribute("data-updates") : "";
  if (!url || !window.fetch) { return; }
  var version = live.getAttribute("data-v") || "";
  var failures = 0;
  var thread = live.tagName === "OL";

  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
  }
  function lost(text) {
    var note = document.querySelector("p.live-lost");
    if (!note) {
      note = document.createElement("p");
      note.className = "live-lost";
      live.parentNode.insertBefore(note, live);
    }
    note.textContent = text;
  }
  function found() {
    var note = document.querySelector("p.live-lost");
    if (note) { note.parentNode.removeChild(note); }
  }
  function next(ms) { window.setTimeout(poll, ms); }
  function poll() {
    if (document.hidden) { next(5000); return; }
    var ask = url + "?v=" + encodeURIComponent(version);
    fetch(ask, { cache: "no-store", credentials: "same-origin",
                 headers: { "Accept": "application/json" } }).then(function (r) {
      if (r.status === 401 || r.status === 403) {
        lost("Signed out: reload the page to sign in again.");
        return null;
      }
      if (r.status === 204) { failures = 0; found(); next(2000); return null; }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json().then(function (data) {
        failures = 0;
        found();
        version = String(data.v);
        if (live.innerHTML.trim() !== data.html.trim()) {
          var stick = thread && atBottom();
          live.innerHTML = data.html;  // built and escaped by the server
          if (stick) { window.scrollTo(0, document.body.scrollHeight); }
        }
        next(2000);
      });
    }).catch(function () {
      failures += 1;
      if (failures >= 3) { lost("No connection to websmsd: retrying\u2026"); }
      next(Math.min(30000, 2000 * failures));
    });
  }
  if (thread && !location.hash) { window.scrollTo(0, document.body.scrollHeight); }
  poll();
})();
