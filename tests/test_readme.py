"""The README's Python examples run as written, top to bottom, in one namespace."""
import pytest
import pathlib
import re

# Subprocesses, notebooks or whole training runs: the slow tier.
pytestmark = pytest.mark.slow

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md[python block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "(1, 10)" in out and "105,506" in out and "['left']" in out
    assert "Dense 'serial/dense2': params 'w' has shape (200, 10), expected (200, 5)" in out
    assert "Conv(out_channels=32, kernel_size=5, name='conv1')" in out and "True True" in out
    assert "['fc'] 60" in out and "BasicBlock(out_channels=512, stride=1, name='block2')" in out
    assert "True {}" in out and "['0', '3', '7']" in out
    assert "['dense1', 'dense2'] mlp" in out


def test_readme_opens_with_the_two_commands():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert bash[0].strip() == "pip install -e . && python experiments/quickstart.py"
    assert bash[1].strip() == 'pip install -e ".[test]" && python -m pytest'
