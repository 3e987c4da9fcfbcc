"""Functions short enough to read at once: no function over MAX_LINES lines of code.

Counted per function (methods and nested functions too, each on its own): the
lines of its body from the first statement after the docstring to its last
line, without blank lines and comment-only lines. A nested function's lines
also count towards the function around it.
"""
from __future__ import annotations

import ast
import io
import pathlib
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 60
# The whole package: every module of fundl/ and fundl/data/.
FILES = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("fundl/**/*.py"))


def _code_lines(source: str) -> set[int]:
    """Line numbers holding code: not blank, not only a comment, not inside a string's continuation."""
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                        tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def function_sizes(path: pathlib.Path) -> dict[str, int]:
    """``{qualified name: code lines of its body, docstring excluded}`` for every function in ``path``."""
    source = path.read_text()
    code = _code_lines(source)
    sizes = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    body = child.body
                    if ast.get_docstring(child, clean=False) is not None:
                        body = body[1:]
                    if body:
                        span = range(body[0].lineno, child.end_lineno + 1)
                        sizes[name] = sum(1 for i in span if i in code)
                    else:
                        sizes[name] = 0
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sizes


def test_function_sizes_counts_code_not_docstrings_or_comments(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('def f(x):\n    """Doc.\n\n    More doc.\n    """\n    # a comment\n\n'
                 '    y = (x +\n         1)\n    def g():\n        return 2\n    return y\n')
    assert function_sizes(f) == {"f": 5, "f.g": 1}


@pytest.mark.parametrize("name", FILES)
def test_no_function_over_the_limit(name):
    sizes = function_sizes(ROOT / name)
    long = {f: n for f, n in sizes.items() if n > MAX_LINES}
    assert not long, (f"{name}: functions over {MAX_LINES} code lines (docstrings, blanks and "
                      f"comments excluded): {long}; split them into named steps")


if __name__ == "__main__":  # print the longest functions: python tests/test_code_size.py
    import sys
    for name in sys.argv[1:] or FILES:
        if (ROOT / name).exists():
            top = sorted(function_sizes(ROOT / name).items(), key=lambda kv: -kv[1])[:6]
            print(name, top)
