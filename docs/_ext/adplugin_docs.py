"""Sphinx glue for adplugin's documentation site.

- **Markdown docstrings.** adplugin's docstrings are Markdown-ish plain text (`code` in
  backticks, examples indented by four spaces, `- ` lists, a Google-style `Args:` section here
  and there, a table with aligned columns). Each docstring autodoc collects is parsed as MyST
  Markdown, not as reStructuredText, after two rewrites: `Args:` / `Returns:` / `Raises:`
  sections become field lists, and blocks with aligned columns become literal blocks. Raw HTML
  is not recognized: `ap.<name>` is text.
- **API pages.** `.. api-module:: adplugin.placement` (in an `{eval-rst}` block) documents a
  module: its docstring, then each public name (its `__all__`, in that order) with autodoc. An
  object that several public modules export is documented once, under the first module of
  `adplugin_api_modules` that exports it, and linked to from the others.
- **Notebooks.** A notebook stub (`docs/notebooks/*.nblink`) is a JSON object
  `{"path": "benchmarks/nb_x.py"}` naming a jupytext percent-format notebook by its path from the
  repository root; `read_stub` (registered with myst-nb's `nb_custom_formats`) reads that
  notebook in its place, so the notebooks live once, in `benchmarks/`, and the site shows them
  executed. A stub's page depends on its notebook: editing the notebook rebuilds the page.
  The notebooks run in a kernel of this very interpreter: a kernelspec written to a temporary
  folder put first on `JUPYTER_PATH` (neither a user's nor the system's `python3` kernelspec is
  used); the figures and JSON each notebook writes go to that folder too.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective, new_document

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "adplugin-docs"
STUB_SUFFIX = ".nblink"

# ----------------------------------------------------------------------------------------------
# Markdown docstrings
# ----------------------------------------------------------------------------------------------

_FIELDS = {"Args": "param", "Arguments": "param", "Parameters": "param", "Returns": "returns",
           "Raises": "raises"}
_SECTION = re.compile(r"^(\s*)(" + "|".join(_FIELDS) + r"):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}[\w.]+)(?:\s*\([^)]*\))?:\s*(.*)$")  # "name (type): text"


def google_sections_to_fields(lines: list[str]) -> list[str]:
    """`Args:` / `Returns:` / `Raises:` sections as MyST field lists (`:param x: ...`).

    A section is its header line and the lines indented deeper than it; in it, an entry
    `name: text` (at the section's own indentation) starts a field, deeper lines continue it.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = _SECTION.match(lines[i])
        i += 1
        if not header:
            out.append(lines[i - 1])
            continue
        field, depth = _FIELDS[header.group(2)], len(header.group(1))
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > depth):
            body.append(lines[i].strip() and lines[i])
            i += 1
        while body and not body[-1]:
            body.pop()
        indent = min(len(b) - len(b.lstrip()) for b in body if b) if body else 0
        out += [""] if out and out[-1].strip() else []
        for line in body:
            text = line[indent:]
            entry = _ENTRY.match(text) if field != "returns" else None
            if field == "returns" and text and not any(o.startswith(":returns:") for o in out):
                out.append(f":returns: {text}")
            elif entry and text == text.lstrip():
                out.append(f":{field} {entry.group(1)}: {entry.group(2)}")
            else:
                out.append(f"  {text.strip()}" if text else "")
        out.append("")
    return out


_ALIGNED = re.compile(r"^ {1,3}\S+ {2,}\S")  # "  name   text": a column laid out by hand


def aligned_blocks_as_text(lines: list[str]) -> list[str]:
    """Blocks indented by 1-3 spaces whose first line has aligned columns, kept as laid out.

    Markdown would join them into the paragraph above; a plain-text docstring that aligns
    columns (a table of checks, say) means them to be read as laid out, so they become a
    literal block. The block runs to the next line that is not indented.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _ALIGNED.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i][:1] == " "):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        out += ([""] if out and out[-1].strip() else []) + ["```text"] + block + ["```", ""]
    return out


def _markdown_docstring(app: Any, what: str, name: str, obj: Any, options: Any,
                        lines: list[str]) -> None:
    """autodoc-process-docstring: the docstring, wrapped in a directive that parses Markdown."""
    if not any(line.strip() for line in lines):
        return
    type_doc = type(obj).__doc__
    if what in ("data", "attribute") and isinstance(type_doc, str) and \
            inspect.cleandoc(type_doc) == "\n".join(lines).strip():
        lines[:] = []  # a value's class docstring (an int's, a namespace's) says nothing of it
        return
    try:
        source = f"{inspect.getsourcefile(inspect.unwrap(obj))}:docstring of {name}"
    except TypeError:
        source = f"docstring of {name}"
    body = aligned_blocks_as_text(google_sections_to_fields(lines))
    lines[:] = [f".. adplugin-markdown:: {source}", ""] + \
        [f"   {line}" if line.strip() else "" for line in body] + [""]


class MarkdownDirective(SphinxDirective):
    """Its content (a docstring) parsed as MyST Markdown, warnings pointing at the docstring."""

    has_content = True
    required_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        from myst_parser.mdit_to_docutils.sphinx_ import SphinxRenderer
        from myst_parser.parsers.mdit import create_md_parser

        source = self.arguments[0]
        document = new_document(source, self.state.document.settings)
        document.reporter.get_source_and_line = lambda line=None: (source, line)
        parser = create_md_parser(self.env.myst_config, SphinxRenderer)
        parser.options["html"] = False  # plain text: "ap.<name>" is not an HTML tag
        parser.options["document"] = document
        parser.render("\n".join(self.content))
        return list(document.children)


# ----------------------------------------------------------------------------------------------
# API pages
# ----------------------------------------------------------------------------------------------


def public_names(module: Any) -> list[str]:
    """`__all__`, or (without one) the module's names that do not start with `_`."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and type(v).__name__ != "_Feature"]  # not `from __future__ import ...`
    return list(names)


def home_module(app: Any, name: str, obj: Any) -> str | None:
    """The first module of `adplugin_api_modules` exporting `obj` as `name`."""
    for modname in app.config.adplugin_api_modules:
        module = importlib.import_module(modname)
        if name in public_names(module) and getattr(module, name) is obj:
            return modname
    return None


class ApiModuleDirective(SphinxDirective):
    """`.. api-module:: MODULE`: its docstring, then each public name, documented once."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        rst = [f".. automodule:: {modname}", "   :no-members:", ""]
        elsewhere: list[str] = []
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                if obj.__name__ in self.config.adplugin_api_modules:
                    elsewhere.append(f"- ``{name}``: the module :py:mod:`{obj.__name__}`")
                else:
                    elsewhere.append(f"- ``{name}``: the module ``{obj.__name__}``")
                continue
            home = home_module(self.env.app, name, obj)
            if home is not None and home != modname:
                elsewhere.append(f"- ``{name}``: :py:obj:`{home}.{name}`")
                continue
            if inspect.isclass(obj):
                kind = "exception" if issubclass(obj, BaseException) else "class"
            elif callable(obj):
                kind = "function"
            else:
                kind = "data"
            rst += [f".. auto{kind}:: {modname}.{name}"]
            if kind == "data" and (len(repr(obj)) > 80 or " at 0x" in repr(obj)):
                rst += ["   :no-value:"]  # a short, stable value is shown, as `= 64`
            rst += [""]
        if elsewhere:
            rst += [".. rubric:: Also exported here", ""] + elsewhere + [""]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(rst, source=f"<api-module {modname}>"),
                                self.content_offset, container, match_titles=True)
        return list(container.children)


# ----------------------------------------------------------------------------------------------
# Notebooks
# ----------------------------------------------------------------------------------------------


def stub_target(text: str) -> Path:
    """The notebook a stub names (a path from the repository root)."""
    return ROOT / json.loads(text)["path"]


def read_stub(text: str) -> Any:
    """The jupytext notebook a stub names, set to run in this interpreter's kernel."""
    import jupytext

    nb = jupytext.read(stub_target(text), fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "adplugin docs",
                                 "language": "python"}
    return nb


def _note_notebook(app: Any, docname: str, source: list[str]) -> None:
    """A stub's page depends on the notebook it names (and on what every notebook imports)."""
    if str(app.env.doc2path(docname)).endswith(STUB_SUFFIX):
        app.env.note_dependency(str(stub_target(source[0])))
        app.env.note_dependency(str(ROOT / "benchmarks" / "_notebook.py"))


def _kernel_folder(app: Any) -> None:
    """A kernelspec of this interpreter and an output folder for the notebooks, both temporary."""
    folder = Path(tempfile.mkdtemp(prefix="adplugin-docs-"))
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "adplugin docs", "language": "python"}))
    paths = [str(folder), *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(paths)
    os.environ["ADPLUGIN_NOTEBOOK_OUT"] = str(folder / "results")
    app.connect("build-finished", lambda _app, _exc: shutil.rmtree(folder, ignore_errors=True))


def setup(app: Any) -> dict[str, Any]:
    app.add_config_value("adplugin_api_modules", [], "env", list)
    app.add_directive("adplugin-markdown", MarkdownDirective)
    app.add_directive("api-module", ApiModuleDirective)
    app.connect("autodoc-process-docstring", _markdown_docstring)
    app.connect("builder-inited", _kernel_folder)
    app.connect("source-read", _note_notebook)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
