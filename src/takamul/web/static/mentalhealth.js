// Takamul web app, the mental health screening form: the running total and severity band as
// answers are picked. Loaded as a file (the Content-Security-Policy forbids inline script);
// everything it shows comes from the form's data attributes, translated by the server.
"use strict";
(function () {
  var form = document.getElementById("mh-form");
  var out = document.getElementById("mh-total");
  if (!form || !out) { return; }
  var bands = JSON.parse(form.getAttribute("data-bands") || "[]");
  var digits = form.getAttribute("data-digits") || "0123456789";
  var items = Number(form.getAttribute("data-items") || "0");
  var template = out.getAttribute("data-template") || "";
  function num(value) {
    return String(value).replace(/[0-9]/g, function (d) { return digits.charAt(Number(d)); });
  }
  function band(total) {
    var found = "";
    bands.forEach(function (b) { if (total >= b[0]) { found = b[1]; } });
    return found;
  }
  function update() {
    var total = 0;
    var answered = 0;
    var top = 0;
    form.querySelectorAll("fieldset[data-scored]").forEach(function (set) {
      var scores = Array.prototype.map.call(
        set.querySelectorAll("input[data-score]"), function (i) { return Number(i.dataset.score); });
      top += scores.length ? Math.max.apply(null, scores) : 0;
      var picked = set.querySelector("input[data-score]:checked");
      if (picked) { total += Number(picked.dataset.score); answered += 1; }
    });
    if (!answered) { return; }
    out.textContent = template
      .replace("{total}", num(total)).replace("{max}", num(top)).replace("{band}", band(total))
      .replace("{answered}", num(answered)).replace("{items}", num(items));
    out.setAttribute("data-total", String(total));
  }
  form.addEventListener("change", update);
  update();
})();
