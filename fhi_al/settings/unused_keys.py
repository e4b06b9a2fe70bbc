"""Keys of the original tool's (and MACE's) settings files that fhi_al accepts and ignores, per section: the
loader logs a note for each instead of refusing it as unknown.
"""

from __future__ import annotations

GENERAL_UNUSED = ("save_cpu", "compute_forces", "model_choice", "output_dir")

ARCHITECTURE_UNUSED = ("E0s", "compute_avg_num_neighbors", "use_multihead_model", "num_multihead_heads",
                       "r_max_lr")

TRAINING_UNUSED = ("valid_fraction", "train_path", "valid_path", "test_path", "max_num_epochs", "patience",
                   "eval_interval", "swa", "swa_lr", "swa_energy_weight", "swa_forces_weight",
                   "swa_virials_weight", "swa_stress_weight", "swa_dipole_weight", "start_swa",
                   "dipole_weight", "pretrained_model", "pretrained_weights",
                   "update_avg_num_neighbors", "perform_finetuning", "finetuning_choice", "freeze_embedding",
                   "freeze_zbl", "freeze_hirshfeld", "freeze_partial_charges", "freeze_shifts", "freeze_scales",
                   "convert_to_lora", "lora_rank", "lora_alpha", "lora_freeze_A", "convert_to_multihead")

MACE_MISC_UNUSED = ("wandb", "eval_interval", "compute_stress", "compute_dipole", "enable_cueq",
                    "enable_cueq_train")

AL_UNUSED = ("initial_valid_ratio", "skip_step", "threshold", "path_to_trajectories", "freeze_threshold_dataset",
             "seeds_tags_dict", "uncertainty_type", "intermol_crossed_limit", "intermol_forces_weight",
             "extend_existing_final_ds", "use_foundational", "foundational_model_settings", "replay_strategy",
             "train_subset_size", "valid_subset_size", "update_md_checkpoints", "progress_dft_update",
             "use_teacher_reference", "teacher_reference_settings", "distinct_model_sets", "mol_idxs")

AL_MISC_UNUSED = ("output_dir", "dataset_dir", "log_dir", "analysis", "energy_key", "forces_key", "stress_key",
                  "dipole_key", "polarizability_key", "head_key", "charges_key", "total_charge_key",
                  "total_spin_key", "mol_idxs")
