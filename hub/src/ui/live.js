// Live updates: the page's <main> is fetched again every few seconds (same URL, same
// session cookie) and replaced, unless the user is typing in a form field.
(function () {
  var main = document.getElementById("main");
  if (!main) return;
  var every = parseInt(main.getAttribute("data-live"), 10) || 3000;
  function refresh() {
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "SELECT")) return schedule();
    fetch(window.location.href, { headers: { "X-Skiff-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) main.innerHTML = html; })
      .catch(function () {})
      .then(schedule);
  }
  function schedule() { window.setTimeout(refresh, every); }
  schedule();
})();
