// The confirm page submits its own form: the reader sees one click (the link in
// the email), while link scanners, which fetch pages but run no scripts, change
// nothing.  Coming back with the browser's Back button does not submit again.
(function () {
  "use strict";
  var form = document.querySelector("form[data-autosubmit]");
  if (!form) {
    return;
  }
  var nav = window.performance && performance.getEntriesByType
    ? performance.getEntriesByType("navigation")[0]
    : null;
  if (nav && nav.type === "back_forward") {
    return;
  }
  form.classList.add("submitting");
  var button = form.querySelector("button");
  if (button) {
    button.disabled = true;
    button.textContent = "Confirming\u2026";
  }
  HTMLFormElement.prototype.submit.call(form);
})();
