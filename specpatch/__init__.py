# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""specpatch: FFTP-AST, FFTP-AuM and AaPE-ViT audio models for Hugging Face transformers.

Importing the package registers every model with transformers' Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForAudioClassification`, `AutoFeatureExtractor`), so checkpoints load without `trust_remote_code`, and
installs a torchaudio-free implementation of the `"audio-classification"` pipeline. `save_pretrained` writes an
`auto_map` and copies the model code, so the same checkpoints load with `trust_remote_code=True` where the package
is not installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
)

from .augmentation import SpecAugment, SpecMask, WaveformMixup, spec_mask_reference
from .configuration_aape_vit import AaPEViTConfig
from .configuration_fftp_ast import FFTPASTConfig
from .configuration_fftp_aum import FFTPAuMConfig
from .export import export_onnx
from .feature_extraction_specpatch import SpecPatchFeatureExtractor
from .masking import inverse_block_mask
from .modeling_aape_vit import (
    AaPEViTForAudioClassification,
    AaPEViTForPreTraining,
    AaPEViTForPreTrainingOutput,
    AaPEViTModel,
    AaPEViTPreTrainedModel,
)
from .modeling_fftp_ast import FFTPASTForAudioClassification, FFTPASTModel, FFTPASTPreTrainedModel
from .modeling_fftp_aum import FFTPAuMForAudioClassification, FFTPAuMModel, FFTPAuMPreTrainedModel
from .pipeline_audio_classification import SpecPatchAudioClassificationPipeline, register_pipeline
from .sblu import SBLU, ZeroPhaseHighPass, sblu_conv, zero_phase_highpass
from .selective_scan import selective_scan

__version__ = "0.1.0"

_MODELS = (
    # (model_type, config, base model, audio-classification model)
    ("fftp_ast", FFTPASTConfig, FFTPASTModel, FFTPASTForAudioClassification),
    ("fftp_aum", FFTPAuMConfig, FFTPAuMModel, FFTPAuMForAudioClassification),
    ("aape_vit", AaPEViTConfig, AaPEViTModel, AaPEViTForAudioClassification),
)


def _register() -> None:
    for model_type, config_class, base_model_class, classification_class in _MODELS:
        AutoConfig.register(model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, base_model_class, exist_ok=True)
        AutoModelForAudioClassification.register(config_class, classification_class, exist_ok=True)
        AutoFeatureExtractor.register(config_class, SpecPatchFeatureExtractor, exist_ok=True)
        # `save_pretrained` then writes an `auto_map` and copies the code for `trust_remote_code` loading.
        config_class.register_for_auto_class()
        base_model_class.register_for_auto_class("AutoModel")
        classification_class.register_for_auto_class("AutoModelForAudioClassification")
    AutoModelForPreTraining.register(AaPEViTConfig, AaPEViTForPreTraining, exist_ok=True)
    AaPEViTForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    SpecPatchFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    register_pipeline()


_register()

__all__ = [
    "AaPEViTConfig",
    "AaPEViTForAudioClassification",
    "AaPEViTForPreTraining",
    "AaPEViTForPreTrainingOutput",
    "AaPEViTModel",
    "AaPEViTPreTrainedModel",
    "FFTPASTConfig",
    "FFTPASTForAudioClassification",
    "FFTPASTModel",
    "FFTPASTPreTrainedModel",
    "FFTPAuMConfig",
    "FFTPAuMForAudioClassification",
    "FFTPAuMModel",
    "FFTPAuMPreTrainedModel",
    "SBLU",
    "SpecAugment",
    "SpecMask",
    "SpecPatchAudioClassificationPipeline",
    "SpecPatchFeatureExtractor",
    "WaveformMixup",
    "export_onnx",
    "inverse_block_mask",
    "ZeroPhaseHighPass",
    "sblu_conv",
    "selective_scan",
    "spec_mask_reference",
    "zero_phase_highpass",
]
