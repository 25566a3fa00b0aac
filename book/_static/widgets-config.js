// Resolve the widget runtime's AMD modules (and so its bundled fonts) against _static/, wherever the page sits.
// Loaded after require.js and before embed-amd.js (see nb_ipywidgets_js in _config.yml).
(function () {
  var here = document.currentScript.src;
  require.config({ baseUrl: here.slice(0, here.lastIndexOf("/") + 1) });
})();

// The widget runtime typesets labels through MathJax 2's MathJax.Hub.Queue; the book loads MathJax 3, which has
// no Hub, so every rendered widget threw. Give MathJax 3 the one entry point the runtime calls, typesetting the
// element with MathJax 3's own API. MathJax 3 replaces window.MathJax when its (deferred) script runs, so the
// entry is added again at DOMContentLoaded, before the runtime renders (this listener is registered first).
(function () {
  function hub() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) {
      return;
    }
    mj.Hub = {
      Queue: function (command) {
        var element = command && command[2];
        if (element && mj.typesetPromise) {
          mj.typesetPromise([element]).catch(function () {});
        }
      },
    };
  }
  hub();
  document.addEventListener("DOMContentLoaded", hub);
  window.addEventListener("load", hub);
})();
