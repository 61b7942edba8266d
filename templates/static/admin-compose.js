// Live preview: while the writer types, press the Preview button (it posts the
// form into the preview frame).  Without JavaScript the button still works.
(function () {
  "use strict";
  var form = document.getElementById("compose");
  var button = document.getElementById("preview-button");
  if (!form || !button || !form.requestSubmit) { return; }
  var timer = null;
  function refresh() { form.requestSubmit(button); }
  form.addEventListener("input", function (event) {
    if (event.target.name === "where" || event.target.name === "segment") { return; }
    clearTimeout(timer);
    timer = setTimeout(refresh, 600);
  });
  refresh();
})();
