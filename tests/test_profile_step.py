"""benchmarks/profile_step.py: the attribution of HLO instructions to layers and roles,
and one real profile of a small step (every instruction found in the trace)."""
import importlib.util
import pathlib

import jax
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"
_spec = importlib.util.spec_from_file_location("profile_step", _PATH)
ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps)

FWD = "jit(step)/jvp(resnet18)/layer1/block1/body/conv1/conv_general_dilated"
BWD = "jit(step)/transpose(jvp(resnet18))/layer1/block1/body/conv1/conv_general_dilated"


@pytest.mark.parametrize("op_name, line, expected", [
    (FWD, "%f = f32[8,32,32,64]{3,2,1,0} fusion(", "conv fwd"),
    (BWD, "%f = f32[8,32,32,64]{3,2,1,0} fusion(", "conv dx"),
    (BWD, "%f = f32[3,3,64,64]{3,2,1,0} fusion(", "conv dw"),
    ("jit(step)/jvp(resnet18)/layer2/conv1/jit(_take)/gather", "", "gather"),
    ("jit(step)/mul", "", "mul"),
    ("", "", "(none)"),
])
def test_kind(op_name, line, expected):
    assert ps.kind(op_name, line, batch=8) == expected


@pytest.mark.parametrize("op_name, expected", [
    (FWD, "forward"), (BWD, "backward"), ("jit(step)/add", "optimizer")])
def test_role(op_name, expected):
    assert ps.role(op_name) == expected


def test_layer_paths():
    assert ps.layer(FWD, 1) == "layer1"
    assert ps.layer(BWD, 3) == "layer1/block1/body"
    assert ps.layer("jit(step)/jvp(resnet18)/layer2/conv1/jit(_take)/gather", 9) == "layer2/conv1"
    assert ps.layer("jit(step)/add", 2) == "(outside the layers)"


def test_hlo_index_reads_names_and_metadata():
    text = ('  %fusion.3 = f32[2,2]{1,0} fusion(f32[2,2]{1,0} %p), kind=kLoop, '
            'metadata={op_name="jit(f)/jvp(m)/dense/dot_general" source_file="x.py"}\n'
            '  ROOT %tuple.1 = (f32[2,2]{1,0}) tuple(%fusion.3)\n')
    idx = ps.hlo_index(text)
    assert idx["fusion.3"][:2] == ("fusion", "jit(f)/jvp(m)/dense/dot_general")
    assert idx["tuple.1"][1] == ""


def test_profile_of_a_small_step_finds_its_instructions(tmp_path):
    run, text = ps.build_step("convnet_mnist", 4)
    jax.block_until_ready(run())
    with jax.profiler.trace(str(tmp_path)):
        jax.block_until_ready(run())
    times = ps.event_times(str(tmp_path))
    index = ps.hlo_index(text)
    found = {n: ms for n, ms in times.items() if n in index}
    assert found and sum(found.values()) > 0
    kinds = {ps.kind(index[n][1], index[n][2], 4) for n in found}
    assert {"conv fwd", "dot_general"} <= kinds or "gather" in kinds, kinds
