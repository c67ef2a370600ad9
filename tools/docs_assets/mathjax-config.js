// MathJax 3, served from this site (assets/mathjax/), never from a CDN.
// tools/build_docs.py cuts every formula out of the Markdown (as Jupyter does) into
// <span class="arithmatex">\(..\)</span> or <span class="arithmatex">\[..\]</span>, with its TeX
// hidden from Markdown. Only \(..\) and \[..\] are delimiters here, so a dollar sign in prose is
// just a dollar sign; MathJax skips <pre> and <code>, so code and text outputs stay untouched.
// Headings with math reappear in the navigation and table of contents, and typeset there too.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "none"   // as Quarto/pandoc: number an equation with \tag{}
  },
  options: {
    ignoreHtmlClass: "tex2jax_ignore|mathjax_ignore",
    processHtmlClass: "tex2jax_process|mathjax_process"
  }
};

// Search results quote the pages, formulas included: typeset them as they appear.
document.addEventListener("DOMContentLoaded", () => {
  const list = document.querySelector(".md-search-result__list");
  if (!list) return;
  let busy = false;
  const observer = new MutationObserver(() => {
    if (busy || !(window.MathJax && MathJax.typesetPromise)) return;
    busy = true;
    observer.disconnect();
    MathJax.startup.promise
      .then(() => { MathJax.typesetClear([list]); return MathJax.typesetPromise([list]); })
      .catch((err) => console.error("MathJax in search results:", err))
      .finally(() => { busy = false; observer.observe(list, {childList: true, subtree: true}); });
  });
  observer.observe(list, {childList: true, subtree: true});
});
