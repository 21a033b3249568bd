"""The quantum layer: both engines agree with Qiskit and with each other, gradients flow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from hybrid.quantum.gates import UnsupportedGateError
from hybrid.quantum import QuantumConfig, QuantumLayer, build_circuit, qiskit_expectations
from hybrid.quantum.statevector import compile_circuit

CONFIGS = [
    QuantumConfig(n_qubits=n, feature_map=fm, reps=reps, entanglement=ent)
    for n, fm, reps, ent in itertools.product(
        [2, 3, 4, 5, 6], ["angle", "zz"], [1, 2, 3], ["linear", "circular", "full"]
    )
]


def _ids(cfg: QuantumConfig) -> str:
    return f"{cfg.n_qubits}q-{cfg.feature_map}-r{cfg.reps}-{cfg.entanglement}"


def _random_inputs(cfg, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, cfg.n_qubits, generator=g, dtype=torch.float64) * 2 - 1) * np.pi
    return x


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_statevector_engine_matches_qiskit_statevector(cfg):
    layer = QuantumLayer(cfg, engine="statevector", seed=1)
    x = _random_inputs(cfg)
    with torch.no_grad():
        layer.weight.uniform_(-np.pi, np.pi)
        out = layer(x).numpy()
    ref = qiskit_expectations(layer.spec, x.numpy(), layer.weight.detach().numpy())
    assert out.shape == (4, cfg.n_qubits)
    np.testing.assert_allclose(out, ref, atol=1e-10, rtol=0)


# parameter-shift gradients are slow: a covering set of qubits, reps, maps and entanglements
QNN_CONFIGS = [
    QuantumConfig(n_qubits=n, feature_map=fm, reps=reps, entanglement=ent)
    for n, fm, reps, ent in [
        (2, "zz", 1, "linear"), (2, "angle", 3, "full"), (3, "angle", 2, "circular"),
        (3, "zz", 3, "full"), (4, "zz", 2, "circular"), (5, "angle", 1, "linear"),
        (6, "zz", 1, "linear"),
    ]
] + [QuantumConfig()]


@pytest.mark.parametrize("cfg", QNN_CONFIGS, ids=_ids)
def test_qnn_engine_matches_statevector_engine(cfg):
    """Outputs to 1e-10 and gradients to 1e-8 against EstimatorQNN's own float64 results.

    TorchConnector casts results to float32, so the torch-level comparison of the qnn engine
    is at float32 precision; the float64 comparison uses the QNN it wraps.
    """
    fast = QuantumLayer(cfg, engine="statevector", seed=2)
    slow = QuantumLayer(cfg, engine="qnn")
    slow.load_state_dict(fast.state_dict())
    x = _random_inputs(cfg, batch=2, seed=3)
    w = fast.weight.detach()

    qnn = slow.connector.neural_network
    np.testing.assert_allclose(
        fast(x).detach().numpy(), qnn.forward(x.numpy(), w.numpy()), atol=1e-10, rtol=0
    )
    input_grad, weight_grad = qnn.backward(x.numpy(), w.numpy())  # (B, out, in), (B, out, w)
    jac_x, jac_w = torch.autograd.functional.jacobian(
        lambda xx, ww: fast.program(xx, ww), (x, w)
    )  # (B, out, B, in), (B, out, w)
    jac_x = torch.einsum("bobi->boi", jac_x)
    np.testing.assert_allclose(jac_x.numpy(), input_grad, atol=1e-8, rtol=0)
    np.testing.assert_allclose(jac_w.numpy(), weight_grad, atol=1e-8, rtol=0)

    # the torch path of the qnn engine (TorchConnector, float32) agrees too
    torch.testing.assert_close(slow(x), fast(x), atol=1e-6, rtol=0)


def test_qnn_engine_gradients_reach_shared_weight_and_input():
    cfg = QuantumConfig(n_qubits=3)
    fast = QuantumLayer(cfg, engine="statevector", seed=4)
    slow = QuantumLayer(cfg, engine="qnn")
    slow.load_state_dict(fast.state_dict())
    x = _random_inputs(cfg, batch=2).requires_grad_(True)
    slow(x).sum().backward()
    grad_x_slow, grad_w_slow = x.grad.clone(), slow.weight.grad.clone()
    x.grad = None
    fast(x).sum().backward()
    torch.testing.assert_close(grad_x_slow, x.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_w_slow, fast.weight.grad, atol=1e-6, rtol=0)
    assert list(slow.state_dict()) == ["weight"]


@pytest.mark.parametrize("feature_map", ["angle", "zz"])
def test_gradcheck_statevector_engine(feature_map):
    layer = QuantumLayer(QuantumConfig(n_qubits=3, feature_map=feature_map), engine="statevector", seed=5)
    x = _random_inputs(layer.config, batch=2).requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda xx, ww: layer.program(xx, ww), (x, w), atol=1e-8)


def test_basis_permutation_back_propagates_through_its_inverse():
    from hybrid.quantum.segments import PermuteBasis

    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    state = torch.randn(16, 3, dtype=torch.complex128, requires_grad=True)  # three states as columns
    out = PermuteBasis.apply(state, perm, torch.argsort(perm))
    assert torch.equal(out, state.detach()[perm])
    assert torch.autograd.gradcheck(lambda s: PermuteBasis.apply(s, perm, torch.argsort(perm)), (state,))


@pytest.mark.parametrize("n_qubits", [7, 8])
def test_gradcheck_wide_circuits_through_permutations_and_blocks(n_qubits):
    # above FUSE_MAX_QUBITS the CX chains are basis permutations and the RY layers Kronecker blocks
    layer = QuantumLayer(QuantumConfig(n_qubits=n_qubits, feature_map="zz", reps=1), engine="statevector", seed=2)
    x = _random_inputs(layer.config, batch=2).requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda xx, ww: layer.program(xx, ww), (x, w), atol=1e-8)


def test_phase_table_splits_exactly_only_when_its_terms_fit_two_overlapping_parts():
    from hybrid.quantum.phase_split import split_phase_table

    g = torch.Generator().manual_seed(0)
    top = torch.randn(3, 16, 2, generator=g, dtype=torch.float64)  # 8 qubits: 3 top-only, 1 shared, 4 bottom-only
    bottom = torch.randn(3, 2, 8, generator=g, dtype=torch.float64)
    table = (top[..., None] + bottom[:, None]).reshape(3, 256)
    split = split_phase_table(table, 8)
    assert split is not None and split.sizes == (16, 2, 8) and split.rows == 48
    rebuilt = (split.top_t.T.reshape(3, 16, 2, 1) + split.bottom_t.T.reshape(3, 1, 2, 8)).reshape(3, 256)
    torch.testing.assert_close(rebuilt, table, rtol=0, atol=1e-12)
    assert split_phase_table(torch.randn(3, 256, generator=g, dtype=torch.float64), 8) is None  # all interact


@pytest.mark.parametrize("n_qubits, entanglement, sizes", [(8, "linear", (16, 2, 8)), (8, "full", None)])
def test_split_phase_segments_match_the_direct_evaluation(n_qubits, entanglement, sizes):
    from hybrid.quantum.segments import MonomialSegment

    cfg = QuantumConfig(n_qubits=n_qubits, feature_map="zz", reps=2, entanglement=entanglement)
    layer = QuantumLayer(cfg, engine="statevector", seed=3)
    spec = layer.spec
    programs = [compile_circuit(spec.circuit, spec.input_params, spec.weight_params, spec.observables) for _ in range(2)]
    phase_segments = [s for s in programs[1].segments if isinstance(s, MonomialSegment) and s.bank is not None]
    assert [s.split.sizes if s.split else None for s in phase_segments] == [sizes] * 2  # both ZZ blocks
    for segment in phase_segments:
        segment.split = None  # the second program evaluates exp(i * phase) row by row
    x = _random_inputs(cfg, batch=3)
    outputs, grads = [], []
    for program in programs:
        xx, ww = x.clone().requires_grad_(True), layer.weight.detach().clone().requires_grad_(True)
        out = program(xx, ww)
        (out * torch.arange(1.0, out.shape[1] + 1, dtype=out.dtype)).sum().backward()
        outputs.append(out.detach())
        grads += [xx.grad, ww.grad]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=1e-11)
    torch.testing.assert_close(grads[1], grads[3], rtol=0, atol=1e-11)


@pytest.mark.parametrize("n_qubits", [4, 8])  # 8 qubits: the ZZ phases go through split tables
def test_float32_precision_is_close_to_float64(n_qubits):
    cfg = QuantumConfig(n_qubits=n_qubits, entanglement="linear")
    exact = QuantumLayer(cfg, engine="statevector", seed=6)
    single = QuantumLayer(cfg, engine="statevector", precision="float32")
    single.load_state_dict(exact.state_dict())
    x = _random_inputs(cfg, batch=64).float()
    out = single(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact(x.double()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ["statevector", "qnn"])
def test_gradients_reach_a_layer_before_the_quantum_layer(engine):
    torch.manual_seed(0)
    encoder = nn.Linear(6, 4).double()
    layer = QuantumLayer(QuantumConfig(n_qubits=4), engine=engine, seed=7)
    x = torch.randn(3, 6, dtype=torch.float64)
    out = layer(torch.tanh(encoder(x)) * np.pi)
    out.pow(2).sum().backward()
    assert encoder.weight.grad is not None
    assert encoder.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0


def test_auto_engine_choice():
    assert QuantumLayer(engine="auto").engine == "statevector"
    from qiskit.primitives import StatevectorEstimator

    assert QuantumLayer(engine="auto", estimator=StatevectorEstimator()).engine == "qnn"


def test_state_dict_moves_between_engines():
    fast = QuantumLayer(seed=8)
    slow = QuantumLayer(engine="qnn", seed=9)
    assert not torch.equal(fast.weight, slow.weight)
    slow.load_state_dict(fast.state_dict())
    assert torch.equal(fast.weight, slow.weight)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_qubits": 0}, "n_qubits"),
        ({"n_qubits": -2}, "n_qubits"),
        ({"feature_map": "amplitude"}, "feature map"),
        ({"entanglement": "star"}, "entanglement"),
        ({"reps": 0}, "reps"),
        ({"observables": ("ZZ",)}, "Pauli string"),
    ],
)
def test_bad_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantumConfig(**kwargs)


def test_wrong_input_width_raises_value_error():
    layer = QuantumLayer(QuantumConfig(n_qubits=4))
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="engine"):
        QuantumLayer(engine="gpu")


def test_custom_observables_non_diagonal():
    cfg = QuantumConfig(n_qubits=3, observables=("XIZ", "IYY", "ZZZ"))
    layer = QuantumLayer(cfg, seed=10)
    x = _random_inputs(cfg, batch=3)
    ref = qiskit_expectations(layer.spec, x.numpy(), layer.weight.detach().numpy())
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, atol=1e-10)


def test_general_gates_compile_and_match_qiskit():
    """Gates outside the default circuits take the general paths and still agree."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    from qiskit.quantum_info import SparsePauliOp, Statevector

    x, w = ParameterVector("x", 3), ParameterVector("w", 4)
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.rx(x[0], 1)
    qc.cx(0, 1)
    qc.rx(x[1] * x[2], 2)  # input-dependent non-diagonal gate after entanglement
    qc.crz(w[0], 1, 2)
    qc.u(w[1], x[2], 0.3, 0)
    qc.rzz(x[0] + w[2], 0, 2)
    qc.swap(0, 2)
    qc.ryy(w[3], 1, 2)
    qc.sx(1)
    obs = [SparsePauliOp(p) for p in ("ZII", "IXI", "YIZ")]
    program = compile_circuit(qc, list(x), list(w), obs)
    xs = torch.tensor([[0.3, -1.2, 2.0], [1.1, 0.4, -0.7]], dtype=torch.float64)
    ws = torch.tensor([0.5, -0.9, 1.3, 0.2], dtype=torch.float64)
    out = program(xs, ws).numpy()
    for i, row in enumerate(xs.numpy()):
        bound = qc.assign_parameters(dict(zip(x, row)) | dict(zip(w, ws.numpy())))
        sv = Statevector(bound)
        np.testing.assert_allclose(out[i], [sv.expectation_value(o).real for o in obs], atol=1e-10)


def test_unsupported_gate_names_the_gate():
    from qiskit import QuantumCircuit
    from qiskit.circuit import Gate
    from qiskit.quantum_info import SparsePauliOp

    qc = QuantumCircuit(2)
    qc.append(Gate("mystery", 2, []), [0, 1])
    with pytest.raises(UnsupportedGateError, match="mystery"):
        compile_circuit(qc, [], [], [SparsePauliOp("ZZ")])


ENCODINGS = [("angle", 2, 4), ("angle", 1, 2), ("ry", 2, 2), ("ry", 1, 1)]  # map, encodings, highest frequency


@pytest.mark.parametrize("feature_map, feature_reps, frequency", ENCODINGS)
def test_fewer_encodings_lower_the_outputs_frequency_and_match_qiskit(feature_map, feature_reps, frequency):
    """Each encoding gate adds one to the highest frequency an output has in its angle (the slot's smoothness)."""
    cfg = QuantumConfig(n_qubits=3, feature_map=feature_map, feature_map_reps=feature_reps, observables=("IIZ", "ZZI"))
    layer = QuantumLayer(cfg, engine="statevector", seed=1)
    steps = 32
    x = _random_inputs(cfg, batch=1, seed=3).repeat(steps, 1)
    x[:, 0] = torch.arange(steps, dtype=torch.float64) * (2 * np.pi / steps)  # one period of the first angle
    with torch.no_grad():
        layer.weight.uniform_(-np.pi, np.pi)
        out = layer(x).numpy()
    np.testing.assert_allclose(out, qiskit_expectations(layer.spec, x.numpy(), layer.weight.detach().numpy()),
                               atol=1e-10, rtol=0)
    spectrum = np.abs(np.fft.rfft(out[:, 0])) / steps  # <Z> on qubit 0, the encoded qubit
    assert spectrum[frequency] > 1e-6
    assert spectrum[frequency + 1:].max() < 1e-10
    gates = {inst.operation.name for inst in build_circuit(cfg).circuit.data if inst.operation.params
             and any(p.name.startswith("x") for p in inst.operation.params[0].parameters)}
    assert gates == ({"ry", "rz"} if feature_map == "angle" else {"ry"})


def test_build_circuit_is_single_source_of_truth():
    spec = build_circuit(QuantumConfig(n_qubits=4, reps=2))
    assert spec.circuit.num_qubits == 4
    assert len(spec.input_params) == 4
    assert len(spec.weight_params) == 4 * 3  # RealAmplitudes: (reps + 1) * n
    assert [str(o.paulis[0]) for o in spec.observables] == ["IIIZ", "IIZI", "IZII", "ZIII"]


def _edge_circuits():
    """Circuits whose angles are constants or weights where the compiler has no batch."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    x, w = ParameterVector("x", 2), ParameterVector("w", 3)
    cases = {}
    qc = QuantumCircuit(2)  # constant prefix with a numeric angle, no inputs at all
    qc.rx(0.3, 0)
    qc.h(1)
    cases["constant-prefix-angle"] = (qc, [], [])
    qc = QuantumCircuit(2)  # the same, followed by input-dependent gates
    qc.rx(0.3, 0)
    qc.h(1)
    qc.cx(0, 1)
    qc.rx(x[0], 0)
    qc.ry(x[1], 1)
    cases["constant-prefix-angle-inputs"] = (qc, list(x), [])
    qc = QuantumCircuit(2)  # fused runs with numeric angles only, and a constant CRX
    qc.ry(x[0], 0)
    qc.ry(x[1], 1)
    qc.cx(0, 1)
    qc.ry(0.3, 0)
    qc.ry(-0.2, 1)
    qc.crx(0.7, 1, 0)
    cases["constant-fused-angles"] = (qc, list(x), [])
    qc = QuantumCircuit(2)  # three-parameter gates with weights in a fused run
    qc.ry(x[0], 0)
    qc.ry(x[1], 1)
    qc.cx(0, 1)
    qc.u(w[0], w[1], w[2], 0)
    qc.u(w[1], 0.2, w[0], 1)
    cases["fused-u-weights"] = (qc, list(x), list(w))
    qc = QuantumCircuit(2)  # the same gate sequence on every qubit, three parameters each
    qc.u(x[0], w[0], 0.3, 0)
    qc.u(x[1], w[1], w[2], 1)
    qc.cx(0, 1)
    cases["uniform-prefix-u"] = (qc, list(x), list(w))
    return cases


@pytest.mark.parametrize("name", list(_edge_circuits()))
def test_constant_and_multi_parameter_angles_match_qiskit(name):
    from qiskit.quantum_info import SparsePauliOp, Statevector

    qc, x, w = _edge_circuits()[name]
    obs = [SparsePauliOp(p) for p in ("IZ", "XI", "YZ")]
    program = compile_circuit(qc, x, w, obs)
    xs = torch.tensor([[0.4, -1.1], [2.3, 0.6]], dtype=torch.float64)[:, : len(x)]
    ws = torch.tensor([0.5, -0.9, 1.3], dtype=torch.float64)[: len(w)]
    out = program(xs, ws).numpy()
    assert out.shape == (2, 3)
    for i, row in enumerate(xs.numpy()):
        sv = Statevector(qc.assign_parameters(dict(zip(x, row)) | dict(zip(w, ws.numpy()))))
        np.testing.assert_allclose(out[i], [sv.expectation_value(o).real for o in obs], atol=1e-10)


@pytest.mark.parametrize("precision", [torch.float64, torch.float32])
def test_wide_single_qubit_runs_as_kronecker_blocks_match_qiskit_and_the_fused_engine(precision, monkeypatch):
    """Above FUSE_MAX_QUBITS, runs of single-qubit gates become Kronecker blocks: complex and real
    gates, two gates on one qubit, gaps and a block cut at the last qubit give Qiskit's values, and
    the gradients equal the fused engine's."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    from qiskit.quantum_info import SparsePauliOp, Statevector

    from hybrid.quantum import statevector
    from hybrid.quantum.segments import GateByGate, SingleQubitBlocks

    n = 9
    x, w = ParameterVector("x", n), ParameterVector("w", 6)
    qc = QuantumCircuit(n)
    for q in range(n):
        qc.ry(x[q], q)
    qc.cx(0, 1)
    for q, weight in ((1, 3), (2, 4), (6, 2), (8, 0)):  # real: an RY layer with gaps
        qc.ry(w[weight], q)
    qc.h(2)  # a second gate on qubit 2
    qc.cx(3, 4)
    qc.rx(w[0], 0)  # complex gates: a block starting at qubit 0, and one at 5 cut at the last qubit
    qc.u(w[1], w[2], 0.4, 3)
    qc.sx(5)
    qc.t(8)
    qc.ry(w[5], 8)
    qc.cx(7, 8)
    for q in range(n):  # the usual layer: one weighted gate of one kind on every qubit
        qc.ry(w[q % 6], q)
    obs = [SparsePauliOp(p) for p in ("I" * (n - 1) + "Z", "Z" + "I" * (n - 1), "I" * 4 + "X" + "I" * 4)]
    xs = torch.rand(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    ws = torch.tensor([0.5, -0.9, 1.3, 0.2, -0.4, 0.8], dtype=torch.float64)
    program = compile_circuit(qc, list(x), list(w), obs, dtype=precision)
    gate_by_gate = [p for s in program.segments if isinstance(s, GateByGate) for p in s.gates]
    assert any(isinstance(p, SingleQubitBlocks) and not p.real for p in gate_by_gate)
    assert any(isinstance(p, SingleQubitBlocks) and p.real and not p.uniform for p in gate_by_gate)
    assert any(isinstance(p, SingleQubitBlocks) and p.uniform for p in gate_by_gate)
    out = program(xs, ws).numpy()
    for i, row in enumerate(xs.numpy()):
        sv = Statevector(qc.assign_parameters(dict(zip(x, row)) | dict(zip(w, ws.numpy()))))
        expected = [sv.expectation_value(o).real for o in obs]
        np.testing.assert_allclose(out[i], expected, atol=1e-10 if precision == torch.float64 else 1e-5)

    def gradients(program):
        xg, wg = xs.clone().requires_grad_(), ws.clone().requires_grad_()
        program(xg, wg).pow(2).sum().backward()
        return xg.grad, wg.grad

    monkeypatch.setattr(statevector, "FUSE_MAX_QUBITS", n)
    fused = compile_circuit(qc, list(x), list(w), obs, dtype=precision)
    assert not any(isinstance(s, GateByGate) for s in fused.segments)
    for blocked, reference in zip(gradients(program), gradients(fused)):
        torch.testing.assert_close(blocked, reference, atol=1e-9 if precision == torch.float64 else 1e-4, rtol=1e-5)


@pytest.mark.parametrize("n_qubits", [3, 8])
def test_weight_only_phases_after_an_entangler_are_shared_by_every_state(n_qubits):
    """A weighted RZ/CP right after a CX joins a phase segment whose phase has no batch axis: its
    gradient is summed over the states (gradcheck), and the values match Qiskit. The CZ adds a constant
    phase to the same segment."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    from qiskit.quantum_info import SparsePauliOp, Statevector

    x, w = ParameterVector("x", n_qubits), ParameterVector("w", 3)
    qc = QuantumCircuit(n_qubits)
    for q in range(n_qubits):
        qc.ry(x[q], q)
    qc.cx(0, 1)
    qc.rz(w[0], 1)
    qc.cp(w[1], 0, 2)
    qc.cz(1, 2)
    for q in range(n_qubits):
        qc.ry(w[2], q)
    obs = [SparsePauliOp("I" * (n_qubits - 1 - q) + "Z" + "I" * q) for q in range(n_qubits)]
    program = compile_circuit(qc, list(x), list(w), obs)
    xs = torch.rand(2, n_qubits, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    ws = torch.tensor([0.7, -1.1, 0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda ww: program(xs, ww), (ws,), atol=1e-8)
    out = program(xs, ws).detach().numpy()
    for i, row in enumerate(xs.numpy()):
        sv = Statevector(qc.assign_parameters(dict(zip(x, row)) | dict(zip(w, ws.detach().numpy()))))
        np.testing.assert_allclose(out[i], [sv.expectation_value(o).real for o in obs], atol=1e-10)


@pytest.mark.parametrize("n_qubits", [3, 8])
def test_input_dependent_rotations_after_an_entangler_match_qiskit(n_qubits):
    """Re-uploading the angle map puts RY(x)/RZ(x) after CX gates: gates with one matrix per state,
    applied to the column state on their own (fused path at 3 qubits, gate by gate at 8)."""
    config = QuantumConfig(n_qubits=n_qubits, feature_map="angle", reps=1, reupload=2)
    layer = QuantumLayer(config, engine="statevector", seed=4)
    x = torch.rand(3, n_qubits, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3
    np.testing.assert_allclose(layer(x).detach().numpy(),
                               qiskit_expectations(layer.spec, x.numpy(), layer.weight.detach().numpy()), atol=1e-10)
    if n_qubits == 3:
        w = layer.weight.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda xx, ww: layer.program(xx, ww), (x[:2].requires_grad_(True), w), atol=1e-8)
