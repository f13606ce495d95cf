"""Every choice list and default value that the configurations, the CLI and the docks share.

One place to read and to change them. The registries (networks, losses, fairness objectives,
acquisition strategies, uncertainty methods, devices), the frozen configurations
(:class:`~napari_fairseg.models.ModelConfig`, ``TrainConfig``, ``InferenceConfig``,
``RoundConfig``, ``AuditConfig``, ``SimulationConfig``), the ``fairseg`` subcommands' ``choices=``
and ``default=`` and the docks' combo boxes and spin boxes all read this module.

Plain Python only: importing it loads neither torch nor MONAI (nor numpy), so that building the
CLI's parser and a dock's widgets costs nothing. Choice lists are tuples; the defaults of a
configuration are a read-only mapping from its field name to the default value (fields whose
default is ``None`` or empty are left to the dataclass).
"""

from __future__ import annotations

from types import MappingProxyType

# --------------------------------------------------------------------------- choice lists
#: ``ModelConfig.network``: seed 001's light 3D U-Net and the MONAI networks of those names
NETWORKS = ("light_unet", "unet", "segresnet", "swinunetr")
#: ``ModelConfig.head``
HEADS = ("sigmoid", "softmax")
#: ``ModelConfig.intensity``: per-case, per-channel intensity normalisation
INTENSITY = ("zscore", "minmax", "none")
#: the segmentation losses (:mod:`napari_fairseg.training.losses`)
LOSSES = ("bce", "dicece")
#: ``TrainConfig.loss``: a loss, or ``auto`` (BCE for a sigmoid head, Dice + CE for softmax)
TRAIN_LOSSES = ("dicece", "bce", "auto")
#: ``TrainConfig.fairness``: the fairness objectives (:mod:`napari_fairseg.training.objectives`)
OBJECTIVES = ("none", "divergence", "groupdro", "equal-scale")
#: ``RoundConfig.strategy``: the acquisition strategies (:mod:`napari_fairseg.active.strategies`)
STRATEGIES = ("random", "entropy", "localized", "wle", "stochastic", "epistemic",
              "fair-base", "fair-attr", "fair-poly", "fair-ap")
#: the four strategies seed 001 compares (``fairseg simulate``'s default)
PAPER_STRATEGIES = ("random", "entropy", "localized", "wle")
#: ``InferenceConfig.uncertainty``: none, entropy of one pass, MC dropout, test-time augmentation
UNCERTAINTY = ("none", "entropy", "mc", "tta")
#: ``InferenceConfig.empty``: the masked entropy of an empty prediction
EMPTY_RULES = ("max", "whole", "nan")
#: ``InferenceConfig.prefetch``
PREFETCH = ("auto", "on", "off")
#: where a network runs (``cuda:N`` is accepted too); ``auto``: CUDA, then MPS, then CPU
DEVICES = ("auto", "cuda", "mps", "cpu")
#: ``AuditConfig.hd_mode``: HD95 in mm, in voxels (MAMA-MIA parity), or not computed
HD_MODES = ("mm", "voxel", "none")
#: ``fairseg sample brain --field``: a grid around the caudate, or the template's whole head
BRAIN_FIELDS = ("caudate", "whole")
#: ``fairseg sample brain --modality``: the T1 template, or a T2-weighted-like one from its tissue maps
BRAIN_MODALITIES = ("t1", "t2")
#: what moves an adapted model's translations to the source domain (``TrainConfig.uuds_translation``)
UUDS_TRANSLATIONS = ("match", "prompt")
#: how an adapted model's target pre-map starts (``TrainConfig.uuds_polarity``)
UUDS_POLARITIES = ("auto", "as-is", "inverted")
#: who made an annotation version: a person, an accepted model pre-fill, an import
LABEL_SOURCES = ("human", "model", "imported")

# --------------------------------------------------------------------------- defaults
#: :class:`~napari_fairseg.models.ModelConfig`
MODEL = MappingProxyType({"network": "light_unet", "head": "sigmoid", "dropout": 0.0, "intensity": "zscore"})

#: ``TrainConfig`` (``fairseg train``, the Model & inference dock's Train)
TRAIN = MappingProxyType({
    "epochs": 40, "batch_size": 2, "lr": 1e-3, "loss": "dicece", "fairness": "none",
    "alpha": 0.2, "min_support": 0.05, "dro_eta": 0.01, "pseudo_weight": 1.0, "chi": 0.05,
    "val_fraction": 0.25, "seed": 0, "device": "auto", "amp": True, "fg_crop_prob": 0.5,
    "augment": True, "workers": 0, "cache": None,
})

#: ``InferenceConfig`` (``fairseg predict``, the Model & inference dock)
INFERENCE = MappingProxyType({
    "device": "auto", "amp": True, "batch_size": 2, "sw_batch_size": 4, "overlap": 0.25,
    "uncertainty": "entropy", "passes": 8, "roi_radius": 3, "empty": "max", "seed": 0,
    "prefetch": "auto", "maps": True,
})

#: ``RoundConfig``: one active-learning round (``fairseg suggest``, the Active learning dock).
#: Short runs on a CPU: fine-tune the previous round's model; a higher learning rate than
#: seed 001's 1e-4 for 200 epochs.
ROUND = MappingProxyType({
    "strategy": "wle", "batch": 4, "epochs": 20, "first_epochs": 60, "lr": 3e-3, "train_batch": 2,
    "loss": "dicece", "network": "light_unet", "dropout": 0.1, "warm_start": True,
    "pool_split": "train", "eval_split": "test", "roi_radius": 3, "mc_passes": 8, "encoder": "encoder",
    "n_candidates": 200, "lam": 0.5, "seed": 0, "device": "auto", "amp": True, "inference_batch": 4,
})

#: ``SimulationConfig`` (``fairseg simulate``; its round settings are :data:`ROUND`'s)
SIMULATION = MappingProxyType({"strategies": PAPER_STRATEGIES, "seeds": (0, 1, 2), "initial": (5, 5),
                               "cycles": 5})

#: ``fairseg simulate --preset``: the cohort to generate and the experiment's settings
PRESETS = MappingProxyType({
    # The bundled brain sample's generator and volume size (64×64×48 at 1.5 mm), with enough
    # cases for 10 + 5×4 labels: 96 cases, a third held out (16 + 16). Fine-tuning warm-starts
    # from the previous cycle to fit a 2-core CPU in well under 20 minutes.
    "quick": {"cohort": {"n_cases": 96, "shape": (64, 64, 48), "spacing": 1.5, "test_fraction": 1 / 3},
              "strategies": PAPER_STRATEGIES, "seeds": (0, 1, 2),
              "round": {"first_epochs": 60, "epochs": 8, "lr": 3e-3, "warm_start": True}},
    # The paper's sizes: 312 cases of 170×170×76 at 1 mm, 30 held out (15 + 15); every cycle
    # retrains from scratch for 200 epochs with Adam at 1e-4 and BCE. Meant for a GPU.
    "paper": {"cohort": {"n_cases": 312, "shape": (170, 170, 76), "spacing": 1.0, "test_fraction": 30 / 312},
              "strategies": PAPER_STRATEGIES, "seeds": (0, 1, 2, 3, 4),
              "round": {"first_epochs": 200, "epochs": 200, "lr": 1e-4, "loss": "bce", "warm_start": False}},
})

#: ``AuditConfig`` (``fairseg audit``; the Fairness audit dock asks for less bootstrap)
AUDIT = MappingProxyType({
    "hd_mode": "mm", "empty_score": 1.0, "min_support": 0.05, "max_length": 3, "min_group_size": 10,
    "n_boot": 1000, "std_ddof": 1, "seed": 0, "heatmap_attributes": 3,
})

#: ``MaskGeneratorConfig`` and ``ImageGeneratorConfig`` (``fairseg synthesize``, seed 003)
MASK_GENERATOR = MappingProxyType({"steps": 2000, "batch_size": 16, "lr": 1e-3, "width": 128, "min_cases": 5})
IMAGE_GENERATOR = MappingProxyType({"size": 64, "width": 16, "steps": 2000, "batch_size": 8, "lr": 5e-4,
                                    "min_cases": 5})
