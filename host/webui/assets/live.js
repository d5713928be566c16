(function () {
  // Without EventSource the page stays as served (it reloads itself every 30 s only
  // when scripts are off, through the <noscript> refresh).
  if (!window.EventSource || !window.JSON) return;
  var body = document.body, es = new EventSource("events");
  es.onopen = function () { body.setAttribute("data-live", "on"); };
  es.onerror = function () { body.setAttribute("data-live", "off"); };
  es.onmessage = function (e) {
    var m = JSON.parse(e.data), open = {};
    // Replaced sections keep the instance histories a reader opened.
    document.querySelectorAll("details[open][data-key]").forEach(function (d) { open[d.getAttribute("data-key")] = true; });
    Object.keys(m).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.innerHTML = m[id];
    });
    document.querySelectorAll("details[data-key]").forEach(function (d) {
      if (open[d.getAttribute("data-key")]) d.open = true;
    });
  };
})();
