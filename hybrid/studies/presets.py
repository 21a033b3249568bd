"""Study presets: a budget and data (`base`) with named variants over it, and how many seeds.

`hybrid.experiment --preset NAME` runs one; `--list` prints them all. The ladders below are
shared: the ablation components (each row switches on one more part of the method), the
domain-generalization methods for real dermoscopy (#13), and the quantum heads and controls (#12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The ablation ladder: each row switches on one more component of the method.
COMPONENTS: dict[str, dict] = {
    "erm": dict(shift=False, algorithm="erm", quantum=False),
    "shift": dict(shift=True, algorithm="erm", quantum=False),
    "dann": dict(shift=True, algorithm="dann", quantum=False),
    "quantum": dict(shift=True, algorithm="erm", quantum=True),
    "full": dict(shift=True, algorithm="dann", quantum=True),
}
# Domain-generalization methods on real dermoscopy (#13): each against erm, without the quantum layer
# so the comparison is about the DG method (and `full`, the whole method); colour shifts are on for RGB.
DG_METHODS: dict[str, dict] = {name: dict(COMPONENTS[name]) for name in ("erm", "shift", "dann")} | {
    "randconv": dict(shift=False, algorithm="randconv", quantum=False),
    "mixstyle": dict(shift=False, algorithm="mixstyle", quantum=False),
    "coral": dict(shift=False, algorithm="coral", quantum=False),  # against the three real Vienna sources
    "colour_constancy": dict(shift=False, algorithm="erm", quantum=False, colour_constancy=6.0),
    "shift_cc": dict(shift=True, algorithm="erm", quantum=False, colour_constancy=6.0),
} | {"full": dict(COMPONENTS["full"])}  # the project's method (shift, dann, quantum layer), for reference
# The quantum heads and their controls (#12): the whole method (shift + DANN) with each head x layer,
# 4 qubits, and the dressed head at 8 qubits. The bare names (concat, dressed, ...) are the circuit.
QUANTUM_LAYER_NAMES = {"": "pqc", "_separable": "separable", "_twin": "classical_twin", "_none": "none"}
QUANTUM_VARIANTS: dict[str, dict] = {
    f"{head}{suffix}": dict(COMPONENTS["full"], quantum_head=head.rstrip("8"), quantum_layer=layer,
                            n_qubits=8 if head.endswith("8") else 4)
    for head in ("concat", "dressed", "residual", "dressed8") for suffix, layer in QUANTUM_LAYER_NAMES.items()}
# Trainable circuits for the dressed head, chosen on design-validation centers
# (results/quantum_heads/circuit/RULE.md): the smooth angle map instead of the ZZ map, and re-uploading.
DRESSED_CIRCUITS = {"dressed_angle": dict(feature_map="angle"),
                    "dressed_angle_reup2": dict(feature_map="angle", q_reupload=2)}
QUANTUM_VARIANTS |= {f"{name}{suffix}": dict(QUANTUM_VARIANTS[f"dressed{suffix}"], **circuit)
                     for name, circuit in DRESSED_CIRCUITS.items() for suffix in QUANTUM_LAYER_NAMES}
# the chosen circuit at 8 qubits too: the goal asks for dressed at 4 and 8 qubits against concat
QUANTUM_VARIANTS |= {f"dressed8_angle{suffix}": dict(QUANTUM_VARIANTS[f"dressed8{suffix}"], **DRESSED_CIRCUITS["dressed_angle"])
                     for suffix in QUANTUM_LAYER_NAMES}
# The slot's learning rate (results/quantum_heads/slot_lr/RULE.md): at --lr the circuit's weights, which are
# angles, barely move in a short run. Candidates for the angle circuit at 4 and 8 qubits, with the controls that
# have a slot (separable, twin; _none has no slot parameters, so dressed_angle_none is its control).
SLOT_LR_SCALES = (10, 30, 100, 300)
QUANTUM_VARIANTS |= {f"{base}_qlr{scale}{suffix}": dict(QUANTUM_VARIANTS[f"{base}{suffix}"], q_lr_scale=float(scale))
                     for base in ("dressed_angle", "dressed8_angle") for scale in SLOT_LR_SCALES
                     for suffix in ("", "_separable", "_twin")}
ADOPTED_SLOT_LR = 100  # chosen on design-validation centers (results/quantum_heads/slot_lr/design/)


def _slot_variants(tag: str, circuit: dict, none: dict,
                   suffixes: tuple[str, ...] = ("", "_separable", "_twin")) -> dict[str, dict]:
    """The adopted slot-lr circuits at 4 and 8 qubits changed by `circuit`, with their separable and twin
    controls (`{base}_qlr100_{tag}{suffix}`, for each of `suffixes`), and the no-layer control changed by `none`
    (`{base}_{tag}_none`)."""
    variants = {f"{base}_qlr{ADOPTED_SLOT_LR}_{tag}{suffix}":
                dict(QUANTUM_VARIANTS[f"{base}_qlr{ADOPTED_SLOT_LR}{suffix}"], **circuit)
                for base in ("dressed_angle", "dressed8_angle") for suffix in suffixes}
    return variants | {f"{base}_{tag}_none": dict(QUANTUM_VARIANTS[f"{base}_none"], **none)
                       for base in ("dressed_angle", "dressed8_angle")}


# Two tries at the dressed circuit (results/quantum_heads/angle_norm/RULE.md). _anorm: BatchNorm on the slot's
# inputs, which adabn re-estimates per center as it does the embedding's; its _none control gets it too.
# _zzobs: Z on each qubit and ZZ on neighbours, 7 outputs at 4 qubits (the twin matches them); without a circuit
# there is nothing to measure, so dressed_angle_zzobs_none has dressed_angle_none's config.
QUANTUM_VARIANTS |= _slot_variants("anorm", dict(q_angle_norm=True), dict(q_angle_norm=True))
QUANTUM_VARIANTS |= _slot_variants("zzobs", dict(q_observables="z+zz"), {})
# _zzobs_ls: the adopted z+zz readout trained with label smoothing 0.1 (results/quantum_heads/label_smoothing/
# RULE.md): a bounded margin, so the loss stops pushing the circuit's outputs to +-1 once an image is right.
QUANTUM_VARIANTS |= _slot_variants("zzobs_ls", dict(q_observables="z+zz", label_smoothing=0.1),
                                   dict(label_smoothing=0.1))
# _zzobs_drop: the z+zz readout with the slot fed dropout(f) as concat's classifier is
# (results/quantum_heads/slot_dropout/RULE.md); the none control gets the same dropout.
ADOPTED_CIRCUIT, ADOPTED_NONE = dict(q_observables="z+zz", q_input_dropout=True), dict(q_input_dropout=True)
QUANTUM_VARIANTS |= _slot_variants("zzobs_drop", ADOPTED_CIRCUIT, ADOPTED_NONE)


def _past_adopted(tag: str, change: dict, none_change: dict | None = None,
                  suffixes: tuple[str, ...] = ("", "_separable", "_twin")) -> dict[str, dict]:
    """A try past the adopted recipe: `{base}_qlr100_zzobs_drop_{tag}{suffix}` is `_zzobs_drop{suffix}` changed by
    `change`, and `{base}_zzobs_drop_{tag}_none` its no-layer control changed by `none_change` (default: `change`)."""
    return _slot_variants(f"zzobs_drop_{tag}", ADOPTED_CIRCUIT | change,
                          ADOPTED_NONE | (change if none_change is None else none_change), suffixes)


# Two tries past the adopted _zzobs_drop (results/quantum_heads/drop_plus/RULE.md): _zzobs_drop_ls adds label
# smoothing 0.1 (the runner-up of that round), _zzobs_drop5 raises the slot's dropout from 0.2 to 0.5.
QUANTUM_VARIANTS |= _past_adopted("ls", dict(label_smoothing=0.1))
QUANTUM_VARIANTS |= _slot_variants("zzobs_drop5", ADOPTED_CIRCUIT | dict(dropout=0.5), ADOPTED_NONE | dict(dropout=0.5))
# _reup2: the adopted recipe's circuit with data re-uploading x2 (results/quantum_heads/reupload/RULE.md): rejected
# for the dressed head at the design budget, judged again at the ablation budget; no controls unless adopted.
QUANTUM_VARIANTS |= {f"{base}_reup2_qlr{ADOPTED_SLOT_LR}_zzobs_drop": dict(
    QUANTUM_VARIANTS[f"{base}_qlr{ADOPTED_SLOT_LR}_zzobs_drop"], q_reupload=2) for base in ("dressed_angle", "dressed8_angle")}
# _aux1, _aux03: the adopted recipe trained with an auxiliary linear classifier on the embedding (--aux-weight 1 or
# 0.3; results/quantum_heads/aux_loss/RULE.md): deep supervision, so the encoder does not learn only through the
# slot's bottleneck; the classifier is training-only, predictions still pass through the slot. Controls get it too.
QUANTUM_VARIANTS |= _past_adopted("aux1", dict(aux_weight=1.0)) | _past_adopted("aux03", dict(aux_weight=0.3))
# Two design-budget verdicts judged again at the ablation budget inside the adopted recipe (results/quantum_heads/
# budget_recheck/RULE.md): _qlr30_zzobs_drop, the slot lr x30 (runner-up to x100 where the head underfits), and
# _zzobs_drop_anorm, BatchNorm on the slot's inputs (rejected there); the controls get the same change.
QUANTUM_VARIANTS |= {f"{base}_qlr30_zzobs_drop{suffix}": dict(QUANTUM_VARIANTS[f"{base}_qlr{ADOPTED_SLOT_LR}_zzobs_drop{suffix}"],
                                                            q_lr_scale=30.0)
                     for base in ("dressed_angle", "dressed8_angle") for suffix in ("", "_separable", "_twin")}
QUANTUM_VARIANTS |= _past_adopted("anorm", dict(q_angle_norm=True))
# The ansatz depth, never chosen so far (RealAmplitudes reps 2, the default; results/quantum_heads/ansatz_depth/RULE.md):
# _reps4 deeper (20 weights at 4 qubits), _reps1 shallower (8). A twin needs at least inputs + outputs weights, which
# one rep does not give (4 + 7 > 8), so _reps1 has no twin control. Without a circuit there is no depth to change.
QUANTUM_VARIANTS |= _past_adopted("reps4", dict(q_reps=4), {})
QUANTUM_VARIANTS |= _past_adopted("reps1", dict(q_reps=1), {}, suffixes=("", "_separable"))
# Weight averaging (--ema-decay; results/quantum_heads/weight_average/RULE.md): the adopted recipe validated, selected
# and saved as a bias-corrected EMA of its weights, decay 0.99 (about the last 100 of ~440 steps) or 0.995 (~200).
# Every control gets it, and so does concat (concat_ema99, concat_ema995): the gap to concat is judged against both.
EMA_DECAYS = {"ema99": 0.99, "ema995": 0.995}
QUANTUM_VARIANTS |= {name: variant for tag, decay in EMA_DECAYS.items()
                     for name, variant in _past_adopted(tag, dict(ema_decay=decay)).items()}
QUANTUM_VARIANTS |= {f"concat_{tag}": dict(QUANTUM_VARIANTS["concat"], ema_decay=decay) for tag, decay in EMA_DECAYS.items()}
# Model selection (--selection last; results/quantum_heads/selection/RULE.md): the adopted recipe keeps the network at
# the end of its one-cycle schedule instead of the epoch with the highest source-validation AUC, which saturates near
# 0.99 and picked mid-schedule iterates for some seeds. Controls and concat (concat_last) get the same selection.
QUANTUM_VARIANTS |= _past_adopted("last", dict(selection="last"))
QUANTUM_VARIANTS["concat_last"] = dict(QUANTUM_VARIANTS["concat"], selection="last")
# The encoding's frequency (results/quantum_heads/encoding/RULE.md): the angle map encodes each input four times
# (RY(x) RZ(x), twice), so the outputs oscillate up to frequency 4 across the slot's [0, pi] range. _fm1 encodes once
# (RY RZ, frequency 2), _ry1 with one RY as Mari et al.'s dressed circuit does (frequency 1); the ansatz and its weight
# count are unchanged, and the twin and none controls have no encoding: the adopted recipe's own stand for them.
QUANTUM_VARIANTS |= _past_adopted("fm1", dict(q_feature_reps=1), {}, suffixes=("", "_separable"))
QUANTUM_VARIANTS |= _past_adopted("ry1", dict(feature_map="ry", q_feature_reps=1), {}, suffixes=("", "_separable"))
# Where the encoder learns from (results/quantum_heads/head_gradient/RULE.md): _detach trains the head (slot included)
# on detached embeddings while a training-only linear classifier (--aux-weight 1) and DANN shape the encoder, as in
# quantum transfer learning (Mari et al., 2020) but in one run; _hgrad01 lets a tenth of the head's gradient through.
# The controls get the same training.
QUANTUM_VARIANTS |= _past_adopted("detach", dict(aux_weight=1.0, head_grad_scale=0.0))
QUANTUM_VARIANTS |= _past_adopted("hgrad01", dict(aux_weight=1.0, head_grad_scale=0.1))
# The circuit's reading of its inputs (results/quantum_heads/angle_map/RULE.md), on the adopted _detach recipe: a probe
# of the encoded state finds the tanh angle map loses ranking where it saturates. _detach_atan maps z to pi/2 + arctan z;
# _detach_fm1 encodes once (lower frequency). The twin reads the same angles; the none control has no angle map.
DETACH = dict(aux_weight=1.0, head_grad_scale=0.0)
ADOPTED_DETACH = f"dressed_angle_qlr{ADOPTED_SLOT_LR}_zzobs_drop_detach"  # adopted (../head_gradient/RULE.md)
QUANTUM_VARIANTS |= _past_adopted("detach_atan", DETACH | dict(q_angle_map="arctan"), DETACH)
QUANTUM_VARIANTS |= _past_adopted("detach_fm1", DETACH | dict(q_feature_reps=1), DETACH, suffixes=("", "_separable"))
# Mari et al.'s second stage (results/quantum_heads/head_refit/RULE.md): the head of a trained network refitted on its
# fixed encoder for 3 epochs (ERM, no aux classifier, nothing reaches the encoder), at lr 2e-4 (_refit) or 2e-3
# (_refit_lr2e3). Each needs `--set init_from=<the trained runs>/seed{seed}`; concat_refit is concat's head refitted
# the same way, so a refitted dressed head is also judged against a concat given the same extra epochs.
REFITS = {"refit": dict(algorithm="erm", aux_weight=0.0, head_grad_scale=0.0, epochs=3, lr=2e-4),
          "refit_lr2e3": dict(algorithm="erm", aux_weight=0.0, head_grad_scale=0.0, epochs=3, lr=2e-3)}
for _tag, _refit in REFITS.items():
    QUANTUM_VARIANTS |= _past_adopted(f"detach_{_tag}", _refit)  # refits the _detach networks: no aux, no DANN
    QUANTUM_VARIANTS[f"concat_{_tag}"] = dict(QUANTUM_VARIANTS["concat"], **_refit)
# Self-distillation (results/quantum_heads/distill/RULE.md): in _detach the training-only linear classifier on f ranks
# the design-validation centers better than the dressed head of the same network, while the twin's head matches it;
# _detach_kd adds T^2 KL(teacher || head) at T = 2 (weight 1) to the head's loss, _detach_kd4 at T = 4 (more of the
# teacher's logit differences). The encoder trains as in _detach (the term reaches only the head); controls get it too.
DISTILLS = {"kd": dict(head_distill=1.0, distill_temperature=2.0), "kd4": dict(head_distill=1.0, distill_temperature=4.0)}
for _tag, _distill in DISTILLS.items():
    QUANTUM_VARIANTS |= _past_adopted(f"detach_{_tag}", DETACH | _distill)
# _detach_kd_last: _detach_kd keeping the last epoch (its round 1 kept a mid-schedule epoch for one seed, before the
# head had reached its teacher; results/quantum_heads/distill/RULE.md, round 2)
QUANTUM_VARIANTS |= _past_adopted("detach_kd_last", DETACH | DISTILLS["kd"] | dict(selection="last"))
ADOPTED_KD_LAST = f"{ADOPTED_DETACH}_kd_last"  # adopted (../distill/RULE.md, round 2)
# noise-aware training for the backend benchmark: 1,024-shot estimates with fake_manila-like readout error
NOISE_AWARE = dict(q_train_shots=1024, q_readout_error=0.03)
# _noise_aware: that noise with the exact value's gradient; _noise_pathwise: differentiated through its variance
# _noise_device: 1,024-shot estimates, each observable attenuated as fake_manila attenuates it (fitted before training
# on random inputs; results/quantum_heads/noise_device/RULE.md), no uniform readout error on top; _noise_joint: the
# same, with every observable read from the same 1,024 bitstrings (results/quantum_heads/noise_joint/RULE.md);
# _noise_density: those bitstrings drawn from a density-matrix simulation of fake_manila's noise model on the
# transpiled circuit, instead of the attenuated exact state (results/quantum_heads/noise_density/RULE.md)
NOISE_DEVICE = dict(q_train_shots=1024, q_noise_device="aer_noisy:fake_manila")
NOISE_AWARE_BASES = ("dressed", "dressed_angle") + tuple(f"dressed_angle_qlr{scale}" for scale in SLOT_LR_SCALES) + (
    f"dressed_angle_qlr{ADOPTED_SLOT_LR}_zzobs_drop",)  # the adopted recipe (results/quantum_heads/noise_adopted/RULE.md)
NOISE_JOINT = NOISE_DEVICE | dict(q_shot_noise="joint")
# the joint kind on each recipe adopted in turn (results/quantum_heads/noise_joint, noise_detach, noise_kd_last), and
# on the head refit: refitted with that noise against the same refit without it (_detach_refit), both on one fixed
# encoder, a paired test (results/quantum_heads/noise_refit/RULE.md)
NOISE_JOINT_BASES = (NOISE_AWARE_BASES[-1], ADOPTED_DETACH, ADOPTED_KD_LAST, f"{ADOPTED_DETACH}_refit")
# _noise_marginal: the joint noise with the draws marginalized, its expected extra loss added to the class loss
# (results/quantum_heads/noise_marginal/RULE.md)
NOISE_MARGINAL = NOISE_DEVICE | dict(q_shot_noise="marginal")
_HAM = dict(dataset="ham10000_sources_64.npz", center_field="source_ids",
            train_centers="vidir_molemax,vidir_modern,vienna_dias", test_centers="rosendahl",
            size=64, input_size=64, stem_stride=2)
_HAM_DG_NOTE = ("Choose among the variants on Vienna data only, never on real:rosendahl: the source-validation "
                "selection below, or `--validation loso` (leave one Vienna source out, hybrid/studies/loso.py).")



@dataclass(frozen=True)
class Preset:
    description: str
    base: dict  # TrainConfig overrides shared by every variant: the budget and the data
    variants: dict[str, dict] = field(default_factory=lambda: dict(COMPONENTS))
    seeds: int = 3
    notes: tuple[str, ...] = ()  # printed by hybrid.report


_VIRTUAL_NOTE = ("The unseen centers are the virtual target centers of hybrid.shifts (strengths outside the "
                 "training ranges, plus shift families never used in training), applied to the official "
                 "test split; the dataset comes from one hospital, so there is no real second center.")

_QUANTUM_NOTE = ("Each head is compared with its controls paired over (seed, center): separable is the same circuit "
                 "without entangling gates, _twin a classical layer with the circuit's trainable parameter count, "
                 "_none the head without the layer (parameter counts in the table).")

PRESETS: dict[str, Preset] = {
    "ablation": Preset(
        "PneumoniaMNIST with the TrainConfig defaults (the main run's settings) unless overridden; "
        "TTA is evaluated on and off in every run",
        base={}, notes=(_VIRTUAL_NOTE,)),
    "quick": Preset(
        "the whole path in about a minute (CI): 1 epoch on 300 images, a narrow network, 1 thread",
        # one torch thread: on a shared CI core, two threads were measured several times slower
        base=dict(epochs=1, max_train_samples=300, width_mult=0.35, stem_stride=2, batch_size=64,
                  n_bootstrap=100, threads=1),
        seeds=1, notes=("Smoke-test budget: the numbers say nothing about the method.", _VIRTUAL_NOTE)),
    "breastmnist": Preset(
        "BreastMNIST (546 training images), 30 epochs; untuned",
        base=dict(dataset="breastmnist", epochs=30, batch_size=64), notes=(_VIRTUAL_NOTE,)),
    "ham10000": Preset(
        "HAM10000 malignant vs benign: train on the three Vienna sources, hold out Queensland (rosendahl)",
        # 64 px images with a stride-2 stem cost about what 32 px with a stride-1 stem cost,
        # but keep the lesion detail of the stored resolution.
        base=dict(dataset="ham10000_sources_64.npz", label_field="malignant", center_field="source_ids",
                  train_centers="vidir_molemax,vidir_modern,vienna_dias", test_centers="rosendahl",
                  size=64, input_size=64, stem_stride=2),
        variants=dict(COMPONENTS) | {"dann_real": dict(shift=False, algorithm="dann", quantum=False)},
        notes=("The label mix differs strongly between sources (vidir_molemax is almost all nevi; rosendahl "
               "has many more malignant lesions), so a leave-source-out result mixes label shift with "
               "acquisition shift.",
               "What 'malignant' means differs too: in the Vienna sources it is mostly melanoma (313 mel, 88 "
               "bcc, 11 akiec among 4,725 images, 3,890 of them nevi), in rosendahl mostly keratinocytic "
               "(178 mel, 176 bcc, 172 akiec among 1,259), whose benign side holds 287 benign keratoses "
               "(bkl) that resemble bcc/akiec. A Vienna model that learned 'melanoma vs nevus' can rank "
               "rosendahl worse than chance.",
               "real:rosendahl is the only real unseen center (Queensland); the virtual target centers are "
               "applied to the test split of the Vienna sources. Images are 64 px with a stride-2 stem.",
               "dann_real trains DANN against the three real Vienna sources instead of virtual centers.",
               "With one real unseen center, a paired test on rosendahl alone needs at least 6 seeds.")),
    "quantum": Preset(
        "PneumoniaMNIST, the whole method with each quantum head (concat, dressed, residual; dressed also at 8 "
        "qubits) and each layer: the circuit, its separable version, a parameter-matched classical twin, none",
        base={}, variants=dict(QUANTUM_VARIANTS) | {
            f"{name}_noise_aware": dict(QUANTUM_VARIANTS[name], **NOISE_AWARE) for name in NOISE_AWARE_BASES} | {
            f"{name}_noise_pathwise": dict(QUANTUM_VARIANTS[name], **NOISE_AWARE, q_shot_noise="pathwise")
            for name in NOISE_AWARE_BASES if name != "dressed"} | {
            f"{NOISE_AWARE_BASES[-1]}_noise_device": dict(QUANTUM_VARIANTS[NOISE_AWARE_BASES[-1]], **NOISE_DEVICE),
            f"{NOISE_AWARE_BASES[-1]}_noise_density": dict(QUANTUM_VARIANTS[NOISE_AWARE_BASES[-1]], **NOISE_JOINT,
                                                           q_noise_channel="density")} | {
            f"{name}_noise_joint": dict(QUANTUM_VARIANTS[name], **NOISE_JOINT) for name in NOISE_JOINT_BASES} | {
            f"{ADOPTED_KD_LAST}_noise_marginal": dict(QUANTUM_VARIANTS[ADOPTED_KD_LAST], **NOISE_MARGINAL)},
        notes=(_VIRTUAL_NOTE, _QUANTUM_NOTE)),
    "quantum_ham10000": Preset(
        "HAM10000 malignant vs benign, Vienna to Queensland: the quantum preset's dressed and concat variants",
        base=_HAM | dict(label_field="malignant"),
        variants={k: v for k, v in QUANTUM_VARIANTS.items() if k.startswith(("concat", "dressed")) and "8" not in k},
        notes=(_QUANTUM_NOTE,)),
    "ham10000_dg": Preset(
        "HAM10000 malignant vs benign, Vienna to Queensland: erm against the shift simulation (with colour "
        "families), dann, randconv, mixstyle, coral and Shades of Gray colour constancy",
        base=_HAM | dict(label_field="malignant"), variants=dict(DG_METHODS), notes=(_HAM_DG_NOTE,)),
    "ham10000_dg_melnv": Preset(
        "HAM10000 melanoma vs nevus (a label whose meaning does not change between clinics), the "
        "ham10000_dg variants",
        base=_HAM | dict(label_field="labels", classes="mel,nv"), variants=dict(DG_METHODS),
        notes=(_HAM_DG_NOTE, "Melanoma is the positive class.")),
    "ham10000_dg_7class": Preset(
        "HAM10000 seven-class diagnosis (macro one-vs-rest AUC), the ham10000_dg variants",
        base=_HAM | dict(label_field="labels"), variants=dict(DG_METHODS), notes=(_HAM_DG_NOTE,)),
}
