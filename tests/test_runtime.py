"""The one ONNX Runtime session factory (logitstore.runtime.make_session) on a tiny
hand-made graph: provider read back, threads and no-spinning options, one-line errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from logitstore.errors import ProviderError
from logitstore.runtime import make_session


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """logits = float(input_ids) * attention_mask: (B, T) float32."""
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence"])
    nodes = [helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
             helper.make_node("Cast", ["masked"], ["logits"], to=TensorProto.FLOAT)]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [ids, mask], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_cpu_session_runs_and_reports_what_ran(graph):
    s = make_session(graph, "cpu", threads=1)
    assert s.provider == "CPU" and s.input_names == ("input_ids", "attention_mask")
    feed = {"input_ids": np.array([[3, 4, 5]], dtype=np.int64), "attention_mask": np.array([[1, 1, 0]], dtype=np.int64)}
    np.testing.assert_array_equal(s.run(feed), [[3.0, 4.0, 0.0]])
    assert s.session.get_session_options().intra_op_num_threads == 1
    assert make_session(graph, "auto").provider in ("CPU", "CUDA")


def test_no_spinning_is_set_only_when_asked(graph):
    quiet = make_session(graph, "cpu", spinning=False).session.get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    default = make_session(graph, "cpu").session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: spinning
        default.get_session_config_entry("session.intra_op.allow_spinning")


def test_errors_are_provider_errors(graph, monkeypatch):
    with pytest.raises(ProviderError, match="unknown provider"):
        make_session(graph, "tpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ProviderError, match="ONNX Runtime is not installed"):
        make_session(graph, "cpu")
