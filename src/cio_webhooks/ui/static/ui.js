// The Overview's live figures: fetch the fragment every few seconds and swap it in.
// No framework; the page works without it (reload to refresh).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var src = live.getAttribute("data-src");
  var every = parseInt(live.getAttribute("data-every"), 10) || 5000;
  function refresh() {
    if (document.hidden) return;
    fetch(src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) throw new Error("status " + r.status);
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.removeAttribute("data-stale");
      })
      .catch(function () { live.setAttribute("data-stale", "1"); });
  }
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
