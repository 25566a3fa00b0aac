// Resolve the widget runtime's AMD modules (and so its bundled fonts) against _static/, wherever the page sits.
// Loaded after require.js and before embed-amd.js (see nb_ipywidgets_js in _config.yml).
(function () {
  var here = document.currentScript.src;
  require.config({ baseUrl: here.slice(0, here.lastIndexOf("/") + 1) });
})();
