"""The graph hygiene checks flag what they are for, on small graphs built by hand."""

from __future__ import annotations

from onnx import TensorProto, helper

from vivit_deploy.export.graph_checks import check_graph, summarize
from vivit_deploy.model.config import preset


def _attention_graph(prescale: bool, residue: bool, layernorm: bool, opset: int = 18):
    f = TensorProto.FLOAT
    nodes = []
    q = "q"
    if prescale:
        nodes.append(helper.make_node("Mul", ["q", "scale"], ["qs"]))
        q = "qs"
    nodes.append(helper.make_node("MatMul", [q, "kt"], ["scores"]))
    nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1))
    if residue:  # what the safe-softmax decomposition of SDPA leaves: rows of NaN (fully masked) set to 0
        nodes += [helper.make_node("IsNaN", ["probs"], ["nan"]), helper.make_node("Where", ["nan", "zero", "probs"], ["clean"])]
    nodes.append(helper.make_node("MatMul", ["clean" if residue else "probs", "v"], ["ctx"]))
    if layernorm:
        nodes.append(helper.make_node("LayerNormalization", ["ctx", "gamma", "beta"], ["out"], axis=-1))
    else:
        nodes += [helper.make_node("ReduceMean", ["ctx"], ["mu"]), helper.make_node("Sub", ["ctx", "mu"], ["out"])]
    inits = [
        helper.make_tensor("scale", f, [], [0.125]), helper.make_tensor("zero", f, [], [0.0]),
        helper.make_tensor("kt", f, [4, 4], [0.0] * 16), helper.make_tensor("v", f, [4, 4], [0.0] * 16),
        helper.make_tensor("gamma", f, [4], [1.0] * 4), helper.make_tensor("beta", f, [4], [0.0] * 4),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", f, [1, 4])],
                              [helper.make_tensor_value_info("out", f, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _levels(model, precision="fp32"):
    return {f.check: f.level for f in check_graph(summarize(model), precision=precision,
                                                  config=preset("tiny", num_hidden_layers=1))}


def test_clean_graph_passes_every_check():
    levels = _levels(_attention_graph(prescale=True, residue=False, layernorm=True))
    assert set(levels.values()) == {"ok"}, levels


def test_residue_between_the_matmuls_and_decomposed_layernorm_are_blockers():
    levels = _levels(_attention_graph(prescale=True, residue=True, layernorm=False, opset=17))
    assert levels["softmax residue"] == "blocker"
    assert levels["layernorm"] == "blocker"
    assert levels["attention pattern"] == "blocker"  # Where stands between Softmax and the second MatMul


def test_scores_scaled_after_the_matmul_is_a_warning():
    levels = _levels(_attention_graph(prescale=False, residue=False, layernorm=True))
    assert levels["attention pattern"] == "ok"
    assert levels["attention scale"] == "warning"


def test_old_opset_and_wrong_precision_are_blockers():
    levels = _levels(_attention_graph(prescale=True, residue=False, layernorm=True, opset=16), precision="fp16")
    assert levels["opset"] == "blocker"
    assert levels["precision"] == "blocker"
