"""The sections of mace_settings.yaml and active_learning_settings.yaml: one typed dataclass per section.

Defaults, one-line docs, units and allowed ranges live here only; the loader, the annotated examples in
`settings/` and the error messages all read them from these declarations.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from .unused_keys import (AL_MISC_UNUSED, AL_UNUSED, ARCHITECTURE_UNUSED, GENERAL_UNUSED,  # noqa: F401
                          MACE_MISC_UNUSED, TRAINING_UNUSED)
from .md_schema import BAROSTATS, MD_UNUSED, MdSettings, MetadynamicsSettings  # noqa: F401 - part of the schema
from .reference_schema import (REFERENCE_CALCULATORS, REFERENCE_SUBSECTIONS, XTB_METHODS,  # noqa: F401
                               AimsSettings, PyscfSettings, ReferenceSettings, XtbSettings)
from .typed import option

log = logging.getLogger(__name__)

MACE_SETTINGS_FILE = "mace_settings.yaml"
AL_SETTINGS_FILE = "active_learning_settings.yaml"
FOUNDATION_SIZES = ("small", "medium", "large")
FINETUNING_CHOICES = ("naive", "multihead")


# ----------------------------------------------------------------------------------------- mace_settings.yaml
@dataclass(frozen=True)
class GeneralSettings:
    name_exp: str = option("fhi_al", "Name of the experiment; ensemble members are tagged '{name_exp}_{seed}'.")
    seed: int = option(42, "Seed from which the ensemble members' seeds are drawn.")
    default_dtype: str = option("float64", "Floating-point precision of the models.", choices=["float64", "float32"])
    checkpoints_dir: str = option("checkpoints", "Folder (relative to the run folder) for training checkpoints.")
    model_dir: str = option("model", "Folder for the exported model files ({tag}.model).")
    log_dir: str = option("logs", "Folder for the log files of each procedure.")
    results_dir: str = option("results", "Folder for loss curves, error tables and plots.", aliases=["loss_dir"])
    compute_stress: bool = option(False, "Train on the reference stress of periodic structures (REF_stress) with "
                                         "TRAINING.stress_weight and virials_weight; needs a periodic geometry, a "
                                         "reference that gives stress (aims, xtb, emt) and a MACE architecture.")


@dataclass(frozen=True)
class ArchitectureCommon:
    """The keys of ARCHITECTURE that belong to the engine; the rest are the architecture's own Hypers."""

    model: str = option("ScaleShiftMACE", "Architecture (fhi_al.architectures.registry), case-insensitive.")
    atomic_energies: dict[Any, float] | None = option(
        None, "Isolated-atom energies E0 keyed by element symbol or atomic number (FHI_AL-atomic-energies "
              "prints this block); null = fitted to the training set by least squares.", unit="eV")
    energy_shift: dict[Any, float] | float | str | None = option(
        None, "Engine per-element energy shift E0_t in E_i = α_t·Ẽ_i + E0_t, added to any architecture: one "
              "number, a mapping element -> eV, or a statistic such as ${training_data_stats:per_type_energy_shifts}; "
              "null = no engine shift (the architecture's own E0s). Isolated-atom energies are the recommended "
              "shifts; the mean per-atom energy as shift often trains poorly.", unit="eV")
    energy_shift_trainable: bool = option(False, "Train the engine's per-element shifts.")
    energy_scale: dict[Any, float] | float | str | None = option(
        None, "Engine per-element scale α_t of the architecture's atomic energy: one number, a mapping element -> "
              "value, or a statistic such as ${training_data_stats:forces_rms}; null = 1. Different values per "
              "element need per-atom energies (every architecture but MACE).")
    energy_scale_trainable: bool = option(False, "Train the engine's per-element scales.")
    zbl: bool = option(False, "Add the ZBL screened nuclear repulsion pair potential to the model's energy.")
    zbl_cutoff: float = option(1.0, "Distance at which the ZBL repulsion has been switched off; keep it below the "
                                    "shortest bond of the system.", minimum=0.0, exclusive_minimum=True, unit="Å")
    zbl_switch_width: float = option(0.5, "Width of the smooth switch from full ZBL to zero, ending at zbl_cutoff.",
                                     minimum=0.0, exclusive_minimum=True, unit="Å")
    foundation_model: str | None = option(
        None, "MACE only: members start from this foundation model instead of random weights: the path of a "
              ".model file (relative to the run folder) or a MACE-MP size (small, medium, large; mace downloads "
              "it on first use). Its hyperparameters (r_max, channels, max_L, ...) replace the settings'.")
    finetuning: str = option("naive", "With foundation_model: naive (train all weights on the run's data, "
                                      "optionally with freeze) or multihead (mace's multihead fine-tuning: a "
                                      "second head keeps fitting the replay_dataset).",
                             choices=list(FINETUNING_CHOICES))
    freeze: int | None = option(None, "With foundation_model: mace's --freeze: layers 1 to N are frozen (>= 1 "
                                      "embedding, >= 5 interactions, 6 products too; mace's 7 would freeze the "
                                      "readouts as well, leaving nothing to train); null = none.",
                                minimum=1, maximum=6)
    replay_dataset: str | None = option(None, "finetuning multihead: extxyz file of labelled frames (REF_energy, "
                                              "REF_forces) from the foundation's own training data, replayed on "
                                              "its head so the foundation is not forgotten.")


@dataclass(frozen=True)
class ArchitectureSettings:
    """ARCHITECTURE after validation: the model name, E0s by atomic number and the typed hyperparameters."""

    model: str
    atomic_energies: dict[int, float] | None
    hypers: Any
    hypers_statistics: dict[str, str] = field(default_factory=dict)  # hyperparameter -> statistic name
    energy_shift: Any = None
    energy_shift_trainable: bool = False
    energy_scale: Any = None
    energy_scale_trainable: bool = False
    zbl: bool = False
    zbl_cutoff: float = 1.0
    zbl_switch_width: float = 0.5
    foundation_model: str | None = None  # absolute path or a MACE-MP size after load_run_settings
    finetuning: str = "naive"
    freeze: int | None = None
    replay_dataset: str | None = None


@dataclass(frozen=True)
class TrainingSettings:
    batch_size: int = option(5, "Structures per training batch.", minimum=1)
    valid_batch_size: int = option(5, "Structures per validation batch.", minimum=1)
    lr: float = option(0.01, "Learning rate.", minimum=0.0, exclusive_minimum=True)
    weight_decay: float = option(5.0e-7, "L2 weight decay of the optimiser.", minimum=0.0)
    amsgrad: bool = option(True, "Use the AMSGrad variant of Adam/AdamW.")
    optimizer: str = option("adam", "Optimiser.", choices=["adam", "adamw", "sgd"])
    momentum: float = option(0.9, "sgd: momentum.", minimum=0.0, maximum=1.0, exclusive_maximum=True)
    scheduler: str = option("ReduceLROnPlateau", "Learning-rate scheduler: plateau (alias ReduceLROnPlateau), "
                                                 "exponential (alias ExponentialLR, per epoch), onecycle (linear "
                                                 "warm-up, then cosine decay, per optimizer step) or none.",
                            choices=["ReduceLROnPlateau", "ExponentialLR", "plateau", "exponential", "onecycle",
                                     "none"])
    min_lr: float = option(0.0, "plateau and onecycle: lowest learning rate.", minimum=0.0)
    warmup_steps: int = option(0, "onecycle: optimizer steps of linear warm-up to lr.", minimum=0)
    onecycle_total_steps: int = option(1000, "onecycle: optimizer step at which the cosine decay reaches min_lr "
                                             "(constant afterwards).", minimum=1)
    lr_factor: float = option(0.8, "ReduceLROnPlateau: factor applied to the learning rate on a plateau.",
                              minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
    scheduler_patience: int = option(5, "ReduceLROnPlateau: validation checks without improvement before "
                                        "the learning rate is lowered.", minimum=0)
    lr_scheduler_gamma: float = option(0.9993, "ExponentialLR: decay factor per epoch.", minimum=0.0,
                                       maximum=1.0, exclusive_minimum=True)
    ema: bool = option(True, "Keep an exponential moving average of the weights for evaluation and export.")
    ema_decay: float = option(0.99, "Decay of the exponential moving average.", minimum=0.0, maximum=1.0,
                              exclusive_maximum=True)
    clip_grad: float | None = option(10.0, "Clip the gradient norm at this value; null = no clipping.",
                                     minimum=0.0, exclusive_minimum=True)
    loss: str = option("weighted", "Loss: weighted sum of per-atom energy and force squared errors.",
                       choices=["weighted"])
    energy_weight: float = option(1.0, "Weight of the energy term of the loss.", minimum=0.0)
    forces_weight: float = option(1000.0, "Weight of the forces term of the loss.", minimum=0.0)
    stress_weight: float = option(1.0, "GENERAL.compute_stress: weight of mace's stress term, the mean squared "
                                       "stress error in (eV/Å³)² (0 = off).", minimum=0.0)
    virials_weight: float = option(1.0, "GENERAL.compute_stress: weight of mace's virials term, the mean squared "
                                        "virial error per atom in (eV/atom)², virial = -volume·stress (0 = off).",
                                   minimum=0.0)
    config_type_weights: dict[str, float] = option({"Default": 1.0}, "Loss weight per config_type of a structure.")
    force_alpha: float | None = option(None, "aenet's weighting: loss = (1 - α)·energy term + α·force term; "
                                             "replaces energy_weight/forces_weight when set.", minimum=0.0,
                                       maximum=1.0)
    criterion: str = option("mse", "Error function of both loss terms.", choices=["mse", "l1", "huber"])
    huber_delta: float = option(0.01, "huber: where the error turns from quadratic to linear.", minimum=0.0,
                                exclusive_minimum=True)
    energy_loss: str = option("per_atom", "Energy term on the energy per atom or on the total energy.",
                              choices=["per_atom", "total"])
    energy_target: str = option("total", "cohesive: the engine subtracts ARCHITECTURE.atomic_energies and the "
                                         "architecture learns the cohesive energy (needs atomic_energies).",
                                choices=["total", "cohesive"])
    force_fraction: float = option(1.0, "Fraction of the training structures whose forces enter the loss in an "
                                        "epoch.", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    force_sampling: str = option("random", "force_fraction < 1: structures redrawn (random) or always the same "
                                           "(fixed).", choices=["random", "fixed"])
    force_resample_num_epochs: int = option(1, "force_sampling random: epochs between new draws.", minimum=1)
    force_min_structures_per_epoch: int = option(1, "force_fraction < 1: at least this many structures with "
                                                    "forces per epoch.", minimum=0)
    n_early_stopping: int | None = option(None, "Stop a training session after this many validations without a "
                                                "new best loss (null = never).", minimum=1)
    checkpoint_interval: int | None = option(None, "Also checkpoint every this many epochs within a session "
                                                   "(null = only where the procedures do).", minimum=1)
    max_checkpoints: int | None = option(None, "Checkpoints kept per member (null = 1, or all with "
                                               "MISC.keep_checkpoints).", minimum=1)
    save_best: bool = option(False, "Keep checkpoints/{tag}_best.pt of the lowest validation loss.")
    resume_from: str | None = option(None, "New members start from this checkpoint file, or from their latest "
                                           "checkpoint in this folder.")
    max_energy: float | None = option(None, "Drop training/validation structures whose (E - Σ E0)/N exceeds this "
                                            "(E0 = ARCHITECTURE.atomic_energies, else 0); the count is logged.",
                                      unit="eV/atom")
    max_forces: float | None = option(None, "Drop structures with an atomic force larger than this.",
                                      minimum=0.0, exclusive_minimum=True, unit="eV/Å")
    write_predictions: bool = option(False, "After each training session write results/{tag}_predictions_"
                                            "{train,valid}.extxyz and .csv (predicted vs reference).")
    training_plots: bool = option(True, "After each training session plot results/{tag}_curves.png (training "
                                        "and validation RMSE) and results/{tag}_parity.png.")
    cache_featurization: bool = option(True, "Keep featurized structures (neighbour graphs, descriptors) in memory "
                                             "across epochs and sessions, keyed by content.")
    cache_max_structures: int | None = option(None, "Most cached structures, least recently used dropped first "
                                                    "(null = no limit).", minimum=1)
    num_workers: int = option(0, "Worker processes that collate batches; on CPU they overlap only the collation "
                                 "with training (samples come from the cache), so 0 (in-process) is usually best.",
                              minimum=0)


# Keys the original tool kept under TRAINING that are architecture hyperparameters here.
TRAINING_MOVED_TO_ARCHITECTURE = ("scaling",)


@dataclass(frozen=True)
class MaceMiscSettings:
    device: str = option("cpu", "Torch device for training and inference: cpu, cuda, cuda:N (GPU N) or mps; "
                                "checked against this torch build and machine when the settings are read.")
    keep_checkpoints: bool = option(False, "Keep every checkpoint instead of only the latest one per member.")
    restart_latest: bool = option(False, "When a member is created and a checkpoint of it exists, resume from "
                                         "that latest checkpoint instead of starting anew (the procedures always "
                                         "resume their members).")
    log_level: str = option("INFO", "Level of the log files; DEBUG also brings the per-epoch detail to the "
                                    "console (the --log-level option overrides it).",
                            choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    error_table: str = option("PerAtomMAE", "Metrics reported in the error tables.",
                              choices=["PerAtomMAE", "PerAtomRMSE", "TotalMAE", "TotalRMSE"])
    export_lammps: bool = option(False, "MACE only: also write each exported model as a LAMMPS file "
                                        "model/{tag}.model-lammps.pt with mace's own converter (pair_style mace).")


# ------------------------------------------------------------------------------ active_learning_settings.yaml
@dataclass(frozen=True)
class ActiveLearningSettings:
    desired_acc: float = option(0.0, "Target validation force MAE of the ensemble; active learning stops "
                                     "when it is reached (0 = run to the other limits).", minimum=0.0,
                                unit="eV/Å")
    lambda_: float = option(10.0, "The initial dataset is complete when the force MAE is below "
                                  "lambda × desired_acc.", minimum=0.0, exclusive_minimum=True,
                            aliases=["lambda"])
    n_samples: int = option(4, "Structures labelled per ensemble member in each initial-dataset round.",
                            minimum=1)
    valid_ratio: float = option(0.1, "Fraction of new labels that go to the validation sets.", minimum=0.0,
                                maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
    ensemble_size: int = option(4, "Number of models in the ensemble (the uncertainty needs at least 2).",
                                minimum=2)
    c_x: float = option(0.0, "Uncertainty threshold = moving average of the uncertainty × (1 + c_x).",
                        minimum=-1.0, exclusive_minimum=True)
    converge_initial: bool = option(False, "Train the initial ensemble to convergence before active learning.")
    converge_al: bool = option(True, "Train the final ensemble to convergence after active learning.")
    converge_best: bool = option(True, "With converge_al, converge only the member with the lowest validation "
                                       "loss instead of all members.")
    scheduler_initial: bool = option(True, "Use the learning-rate scheduler during the initial dataset.")
    max_initial_epochs: int = option(100, "Most epochs trained while building the initial dataset.", minimum=1)
    max_epochs_worker: int = option(2, "Epochs trained after each new label during active learning.",
                                    minimum=1, aliases=["epochs_per_worker"])
    max_final_epochs: int = option(500, "Most epochs of the final convergence.", minimum=1,
                                   aliases=["max_convergence_epochs"])
    intermediate_epochs: int = option(5, "Epochs trained between initial-dataset sampling rounds, and per "
                                         "training visit of a trajectory during active learning.", minimum=1,
                                      aliases=["intermediate_epochs_al"])
    patience: int = option(50, "Convergence stops after this many validation checks without improvement.",
                           minimum=1, aliases=["convergence_patience"])
    margin: float = option(0.002, "Smallest relative decrease of the validation loss that counts as an "
                                  "improvement during convergence (0.002 = 0.2%).",
                           minimum=0.0)
    max_MD_steps: int = option(100000, "Active learning stops after this many MLFF MD steps per trajectory.",
                               minimum=1)
    max_set_size: int = option(200, "Active learning stops when a member's training set holds this many "
                                    "structures.", minimum=1, aliases=["max_train_set_size"])
    valid_skip: int = option(1, "Validate the ensemble every valid_skip epochs.", minimum=1)
    analysis: bool = option(False, "Record the true error of the ensemble along the MLFF trajectories.")
    analysis_skip: int = option(50, "MD steps between analysis points when analysis is on.", minimum=1,
                                aliases=["sanity_skip"])
    dataset_dir: str = option("data", "Folder (relative to the run folder) of the datasets.")
    skip_step_initial: int = option(25, "MD steps between sampled structures during the initial dataset.",
                                    minimum=1)
    skip_step_mlff: int = option(5, "MD steps between uncertainty checks of the MLFF trajectories (the "
                                    "uncertainty comes with every MD step's forces; frequent checks found "
                                    "more useful labels in scripts/bench_learning_efficiency.py).", minimum=1)
    num_trajectories: int = option(2, "MLFF trajectories sampled side by side.", minimum=1)
    species_dir: str | None = option(None, "FHI-aims species_defaults folder (e.g. .../defaults_2020/light); "
                                           "needed by the aims reference.")
    aims_lib_path: str | None = option(None, "Path of the FHI-aims shared library (libaims*.so) for asi4py.")
    initial_sampling: str = option("aimd", "How the initial structures are sampled: MD with the reference "
                                           "(aimd: every MD step is a reference call), MD with a MACE-MP "
                                           "foundation model (mace-mp0) or with GFN-xTB (xtb-md, "
                                           "initial_xtb_method: cheap next to a DFT reference), whose frames "
                                           "the reference then labels, or the harmonic distribution at "
                                           "MD.temperature from one reference Hessian (normal-modes: a "
                                           "relaxation and 6 calls per atom, then only the labels). On "
                                           "ethanol the initial dataset cost 27 calls with xtb-md (GFN1-xTB MD, "
                                           "GFN2-xTB reference), 86 with normal-modes and 960 with aimd, at "
                                           "about the same final error (scripts/bench_learning_efficiency.py); "
                                           "aimd stays the default, the original tool's behaviour, because only "
                                           "it samples the reference's own distribution (xTB can be "
                                           "qualitatively wrong for a system; harmonic frames around one minimum "
                                           "miss liquids, conformers and cell fluctuations).",
                                   choices=["aimd", "mace-mp0", "xtb-md", "normal-modes"])
    initial_member_data: str = option("shared", "Initial frames per member: shared (n_samples frames per round "
                                                "that every member trains on; members differ by seed and data "
                                                "order; on ethanol half the labels and a lower test error than "
                                                "split, scripts/bench_learning_efficiency.py) or split (the "
                                                "original tool's way: each member labels n_samples frames of its "
                                                "own per round).",
                                      choices=["split", "shared"])
    label_spacing_steps: int = option(20, "MD steps after a label during which its trajectory's uncertainty is "
                                          "not checked, so that no near-duplicate frames are labelled (0 = check "
                                          "every skip_step_mlff steps, the original tool's way; on ethanol it "
                                          "gave 4x the test error of 20, scripts/bench_learning_efficiency.py).",
                                      minimum=0)
    initial_foundational_size: str = option("small", "MACE-MP model for mace-mp0 sampling: small, medium, "
                                                     "large or the path of a model file.")
    initial_xtb_method: str = option("GFN2-xTB", "tblite Hamiltonian of the xtb-md sampling MD; its steps are not "
                                                 "reference calls. Both give energies, forces and, for a cell "
                                                 "periodic in three directions, stress (NPT). Total charge and "
                                                 "unpaired electrons: the sums of geometry.in's initial_charge and "
                                                 "initial_moment (tblite's rule).",
                                     choices=list(XTB_METHODS))
    parallel: bool = option(False, "Parallel mode: rank 0 trains and runs MD while the other ranks label.")
    uncert_not_crossed_limit: int = option(50000, "Uncertainty checks a trajectory may make without crossing the "
                                                  "threshold; after that its next frame goes to the reference "
                                                  "anyway.", minimum=1)
    reference_group_size: int = option(1, "Parallel mode: MPI ranks per reference group.", minimum=1)
    ml_ranks: int = option(1, "MPI ranks that run the ML side during active learning: rank 0 runs the MD and "
                              "trains its members, each further ML rank trains its own members concurrently and "
                              "hands rank 0 their new weights after every training visit. They come out of the "
                              "N ranks of mpirun -n N; at most ensemble_size + 1 (then rank 0 only runs MD).",
                           minimum=1)
    reference_timeout_s: float | None = option(None, "A reference call running longer fails (null = no limit).",
                                               minimum=0.0, exclusive_minimum=True, unit="s")
    uncertainty_upper_bound: float | None = option(
        None, "Uncertainty above which a trajectory is reset instead of sampled (null = no bound).",
        minimum=0.0, exclusive_minimum=True, unit="eV/Å")
    uncertainty_reduction: str = option("max", "How per-atom force uncertainties reduce to one number.",
                                        choices=["max", "mean"])
    threshold_window: int | None = option(None, "Checks (all trajectories together) in the moving average of "
                                                "the threshold (null = the last 400).", minimum=1)
    threshold_warmup_checks: int = option(10, "Uncertainty checks before the threshold is used.", minimum=0)
    threshold_per_system: bool = option(True, "Several systems: each keeps its own uncertainty threshold (moving "
                                              "average of its own checks); false = one threshold shared by all.")
    reset_optimizer_after: int | None = option(None, "Reset a member's optimiser after this many validation "
                                                     "checks without improvement (null = never).", minimum=1)
    min_distance_fraction: float | None = option(
        0.75, "A model-driven MD frame with two atoms closer than this fraction of their covalent radii sum has "
              "left the physical region: it is not labelled and its trajectory returns to its last good frame "
              "(null = no check).", minimum=0.0, exclusive_minimum=True)
    max_reference_force: float | None = option(
        20.0, "A label whose largest reference force on an atom exceeds this bound is not stored (DP-GEN's upper "
              "trust level); its reference call still counts as cost (null = no bound).", minimum=0.0,
        exclusive_minimum=True, unit="eV/Å")
    max_temperature_factor: float = option(5.0, "An MD frame whose kinetic temperature exceeds this multiple of "
                                                "MD.temperature is rejected and its trajectory reset.", minimum=1.0,
                                           exclusive_minimum=True)
    threshold_mode: str = option("moving_average", "How the labelling threshold is set: moving_average (the "
                                                   "original rule, a moving average × (1 + c_x)) or absolute "
                                                   "(threshold_eV_per_A on the calibrated uncertainty).",
                                 choices=["moving_average", "absolute"])
    threshold_eV_per_A: float | None = option(
        None, "threshold_mode absolute: calibrated force uncertainty (expected force error) above which a frame is "
              "labelled. The calibration is fitted on the validation labels at the start of active learning and "
              "after every training; its scale is in results/calibration.json.", minimum=0.0,
        exclusive_minimum=True, unit="eV/Å")
    upper_threshold_eV_per_A: float | None = option(
        None, "threshold_mode absolute: calibrated uncertainty above which a frame is discarded as unphysical and "
              "its trajectory reset (DP-GEN's upper trust level; null = none).", minimum=0.0,
        exclusive_minimum=True, unit="eV/Å")
    replica_exchange_steps: int = option(
        0, "Temperature replica exchange: every this many MD steps, neighbouring trajectories of the same system "
           "in the temperature ladder (per-trajectory MD temperatures) swap configurations by the Metropolis "
           "criterion; the acceptance per pair is in results/replica_exchange.json (0 = off).", minimum=0,
        unit="MD steps")
    initial_train_dataset: str | dict[str, str] | None = option(
        None, "Start from existing data: an extxyz file with REF_energy and REF_forces that every member trains "
              "on, or a mapping from member tag to its file. Replaces the sampling of the initial dataset.")
    initial_valid_dataset: str | dict[str, str] | None = option(
        None, "Validation data that goes with initial_train_dataset (one file, or member tag -> file).")


@dataclass(frozen=True)
class AlMiscSettings:
    create_restart: bool = option(True, "Write restart records so that an interrupted run resumes.")
    path_to_geometry: str | dict[int, str] = option(
        "geometry.in", "Starting structure(s) in FHI-aims geometry.in format: a file, a folder (every *.in file in "
                       "it, sorted by name: systems 0, 1, ...) or a mapping {index: file}; each file is one system, "
                       "named after its file stem.")
    path_to_control: str | dict[int, str] = option(
        "control.in", "FHI-aims control.in (read only when the reference is aims): one file for every system or "
                      "a mapping {index: file} with the indices of path_to_geometry (e.g. a k_grid per system).")


# ------------------------------------------------------------------------------------------------ whole files
@dataclass(frozen=True)
class MaceSettings:
    general: GeneralSettings
    architecture: ArchitectureSettings
    training: TrainingSettings
    misc: MaceMiscSettings


@dataclass(frozen=True)
class AlSettings:
    active_learning: ActiveLearningSettings
    md: MdSettings  # the plain MD block, or trajectory 0's entry when MD maps trajectory indices to blocks
    misc: AlMiscSettings
    reference: ReferenceSettings
    md_by_trajectory: dict[int, MdSettings] = field(default_factory=dict)  # empty for a plain MD block

    def md_settings_for(self, trajectory_index: int) -> MdSettings:
        """The MD settings of one trajectory (the initial dataset's sampling MD is trajectory 0)."""
        if not self.md_by_trajectory:
            return self.md
        if trajectory_index not in self.md_by_trajectory:
            raise KeyError(f"MD has no entry for trajectory {trajectory_index} (entries: "
                           f"{sorted(self.md_by_trajectory)})")
        return self.md_by_trajectory[trajectory_index]

    def md_entries(self) -> list[tuple[str, MdSettings]]:
        """(dotted key, settings) of every MD block given: ("MD", block) or ("MD.<index>", entry)."""
        if not self.md_by_trajectory:
            return [("MD", self.md)]
        return [(f"MD.{index}", md) for index, md in sorted(self.md_by_trajectory.items())]


@dataclass(frozen=True)
class RunSettings:
    """Both settings files, validated. Paths of species_dir/aims_lib_path are absolute; others relative."""

    mace: MaceSettings
    al: AlSettings
    notes: tuple[str, ...] = ()  # accepted-but-unused keys and other remarks, logged once logging is set up

    @property
    def calculator(self) -> str:
        return self.al.reference.calculator or "xtb"


# Section name in the YAML file -> (attribute, dataclass or None for ARCHITECTURE, accepted unused keys)
MACE_SECTIONS: dict[str, tuple[str, type | None, tuple[str, ...]]] = {
    "GENERAL": ("general", GeneralSettings, GENERAL_UNUSED),
    "ARCHITECTURE": ("architecture", None, ARCHITECTURE_UNUSED),
    "TRAINING": ("training", TrainingSettings, TRAINING_UNUSED),
    "MISC": ("misc", MaceMiscSettings, MACE_MISC_UNUSED),
}
AL_SECTIONS: dict[str, tuple[str, type | None, tuple[str, ...]]] = {
    "ACTIVE_LEARNING": ("active_learning", ActiveLearningSettings, AL_UNUSED),
    "MD": ("md", MdSettings, MD_UNUSED),
    "MISC": ("misc", AlMiscSettings, AL_MISC_UNUSED),
    "REFERENCE": ("reference", None, ()),
}
# Whole sections of the original tool's files that fhi_al does not use (parsl cluster set-up).
UNUSED_SECTIONS = ("CLUSTER",)


def yaml_key(f: dataclasses.Field) -> str:
    """The key users write for a field: its first alias when the attribute name is a Python keyword dodge."""
    aliases = f.metadata.get("aliases", ())
    return aliases[0] if f.name.endswith("_") and aliases else f.name
