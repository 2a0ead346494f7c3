"""The documentation site builds with warnings as errors, and holds what it should.

`sphinx-build -W --keep-going -b html docs OUT` runs in a subprocess, as a person (or a docs
host) would run it: the pages of docs/ (MyST), the API reference generated from the
docstrings of every public module, and the benchmark notebooks executed by myst-nb in their
small mode. One test builds the whole site once and checks the pages; the others plant a broken
reference in a copy of a page, and a bad docstring in a module, and check that the same build
reports each, with where it is, and fails.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

for _module in ("sphinx", "myst_nb", "furo", "jupytext", "ipykernel", "matplotlib"):
    pytest.importorskip(_module)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT_S = 900
REQUIRED_API_MODULES = ("adplugin", "adplugin.testing", "adplugin.optimizers",
                        "adplugin.compat.v1", "adplugin.extend", "adplugin.placement",
                        "adplugin.sharding")
# A line Sphinx (or docutils through it) reports: "path:line: WARNING: ...", "ERROR: ...".
# A kernel's own log lines ("[IPKernelApp] WARNING | ...") are not Sphinx's.
PROBLEM = re.compile(r"^(?!\[\w+\]).*\b(WARNING|ERROR|CRITICAL|SEVERE): .*$", re.MULTILINE)


def build(srcdir: Path, out: Path, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    """Build `srcdir` with docs/conf.py, warnings as errors: (exit code, log, problems)."""
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
           "-c", str(DOCS), "-d", str(out / "doctrees"), str(srcdir), str(out / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    log = proc.stdout + proc.stderr
    return proc.returncode, log, [m.group(0) for m in PROBLEM.finditer(log)]


def text_of(html: str) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.DOTALL)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def api_modules() -> list[str]:
    """The public modules of the API reference (docs/conf.py's `adplugin_api_modules`)."""
    conf = (DOCS / "conf.py").read_text()
    block = re.search(r"adplugin_api_modules = \[(.*?)\]", conf, re.DOTALL)
    assert block, "docs/conf.py names the modules of the API reference"
    return re.findall(r'"([\w.]+)"', block.group(1))


def public_names(module: object) -> list[str]:
    """`__all__`, or the names not starting with `_` (as the API pages take them)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and type(v).__name__ != "_Feature"]
    return list(names)


def test_the_site_builds_without_warnings_and_holds_every_page(tmp_path):
    code, log, problems = build(DOCS, tmp_path)
    assert not problems, "the docs build warned:\n" + "\n".join(problems)
    assert code == 0, log[-5000:]
    html = tmp_path / "html"

    # Every page of docs/ is on the site, reachable from the landing page's toctree.
    index = (html / "index.html").read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.stem == "index":
            continue
        assert (html / f"{page.stem}.html").is_file(), f"{page.name} is not on the site"
        assert f'href="{page.stem}.html"' in index, f"{page.name} is not in the index"
    assert 'href="api/index.html"' in index

    # The API reference: every public name of every API module, documented (signature with its
    # type hints, docstring rendered as Markdown) once, under the first module exporting it.
    pages = {p: p.read_text() for p in sorted((html / "api").glob("*.html"))}
    modules = api_modules()
    assert set(REQUIRED_API_MODULES) <= set(modules)
    documented: dict[tuple[str, int], str] = {}  # (name, object) -> the module documenting it
    for modname in modules:
        source = next((t for t in pages.values() if f'id="module-{modname}"' in t), None)
        assert source is not None, f"no API page for {modname}"
        module = importlib.import_module(modname)
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            here = f'id="{modname}.{name}"' in source
            if (name, id(obj)) in documented:
                assert not here, f"{modname}.{name} documented twice"
                home = documented[name, id(obj)]
                assert f'#{home}.{name}"' in source, f"{modname}.{name}: no link to {home}"
            else:
                assert here, f"{modname}.{name} is public but not in the API reference"
                documented[name, id(obj)] = modname
    api = (html / "api" / "adplugin.html").read_text()
    for name in ("gradients", "GradientTape", "Graph", "define_primitive", "function"):
        assert f'id="adplugin.{name}"' in api
    api_text = text_of(api)
    assert "GradientTape(persistent:bool=False,watch_accessed_variables:bool=True)" in \
        api_text.replace(" ", ""), "the signature shows the type hints and defaults"
    assert "Records operations for automatic differentiation" in api_text
    # Markdown docstrings: `code` as code, Google-style Args as a parameter list, no raw HTML.
    assert '<code class="docutils literal notranslate"><span class="pre">tape.gradient' in api
    assert re.search(r"Parameters.*?<strong>lowering</strong>", api, re.DOTALL)
    assert "ap.&lt;name&gt;" in api
    testing = (html / "api" / "testing.html").read_text()  # its table of checks, as laid out
    assert re.search(r'<div class="highlight-text[^>]*>.*?abstract_eval.*?batching', testing,
                     re.DOTALL)

    # The benchmark notebooks, executed: their printed output and their figures.
    for stub in sorted((DOCS / "notebooks").glob("*.nblink")):
        page = (html / "notebooks" / f"{stub.stem}.html").read_text()
        images = re.findall(r'<img [^>]*src="\.\./(_images/[^"]+\.png)"', page)
        assert images, f"{stub.stem}: no figure on the page (was it executed?)"
        assert all((html / i).stat().st_size > 1000 for i in images)
        assert 'class="output' in page, f"{stub.stem}: no cell output"
    dispatch = text_of((html / "notebooks" / "nb_eager_dispatch.html").read_text())
    assert re.search(r"all \d+ cases agree with jax\.numpy", dispatch)
    assert "'small': True" in dispatch, "the notebooks run in their small mode"

    # Nothing on the site names this machine's folders.
    for page in html.rglob("*.html"):
        assert str(ROOT) not in page.read_text(), f"{page.relative_to(html)} names {ROOT}"


def small_site(tmp_path: Path, page: str) -> Path:
    """A source folder holding an index and one page (built with docs/conf.py)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.md").write_text("# Planted\n\n```{toctree}\npage\n```\n")
    (src / "page.md").write_text(page)
    return src


def test_a_broken_reference_in_a_page_fails_the_build(tmp_path):
    page = (DOCS / "tf1.md").read_text()
    lines = page.count("\n")
    src = small_site(tmp_path, page + "\nSee [the planted page](planted_missing.md).\n")
    code, log, problems = build(src, tmp_path / "out")
    assert code != 0, "a warning must fail the build"
    assert any(f"page.md:{lines + 2}:" in p and "planted_missing" in p for p in problems), log


def test_a_bad_docstring_fails_the_build(tmp_path):
    """Docstrings are parsed as Markdown, and what MyST warns about in one is reported."""
    (tmp_path / "planted_module.py").write_text(
        'def f(x):\n    """Fine `code`, *args, ap.<name>; then {ref}`planted-missing-label`."""\n')
    src = small_site(tmp_path, "# Page\n\n```{eval-rst}\n.. autofunction:: planted_module.f\n```\n")
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    code, log, problems = build(src, tmp_path / "out", env={"PYTHONPATH": pythonpath})
    assert code != 0
    assert len(problems) == 1, log
    assert "planted-missing-label" in problems[0], log
    assert "docstring of planted_module.f" in problems[0], "the warning names the docstring"
