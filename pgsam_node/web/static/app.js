// PG-SAM Node dashboard: confirmation before operator actions. Served from /static because the
// Content-Security-Policy forbids inline script.
document.addEventListener("submit", function (ev) {
  var form = ev.target;
  var q = form.getAttribute("data-confirm");
  if (q && !window.confirm(q)) { ev.preventDefault(); }
});
