// Takamul web app: the few behaviours plain HTML lacks. No inline script anywhere (the
// Content-Security-Policy forbids it); this file and htmx are all the JavaScript a page loads.
"use strict";
(function () {
  var csrf = document.body ? document.body.getAttribute("data-csrf") : null;
  // every htmx request carries the session's CSRF token
  document.addEventListener("htmx:configRequest", function (event) {
    if (csrf) { event.detail.headers["X-CSRF-Token"] = csrf; }
  });
  // preference selects apply at once; the Apply button stays for keyboards and no-JS
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target && target.classList && target.classList.contains("autosubmit") && target.form) {
      target.form.submit();
    }
  });
  // a confirmation asked by data-confirm on a form (plain confirm(), no eval)
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
})();
