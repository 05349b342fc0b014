"""Networks and their packaging: Gaussian heads and NLL, residual and attention estimators, the
denoising autoencoder, the registry that rebuilds them from JSON, and the model bundle.

Every estimator maps model input (B, 2, 8, 4096) to a :class:`GaussianOutput` over the four
normalised labels; the DAE maps it to the clean flux channel (B, 1, 8, 4096).
"""
from .attention import AttentionConfig, AttentionEstimator
from .bundle import BundleError, Manifest, ModelBundle, Prediction
from .dae import DAEConfig, DenoisingAutoencoder, dae_loss
from .patch import PatchConfig, PatchEstimator
from .pca import FrontEndNotFitted, PCAConfig, PCAEstimator
from .heads import GaussianOutput, PhysicalGaussian, beta_nll_weights, combine_gaussians, gaussian_nll, to_physical
from .registry import ARCHITECTURES, ModelConfigError, build_model, config_from_dict, config_to_dict, describe
from .resnet import ResNetConfig, ResNetEstimator

__all__ = [
    "ARCHITECTURES",
    "AttentionConfig",
    "AttentionEstimator",
    "BundleError",
    "DAEConfig",
    "DenoisingAutoencoder",
    "GaussianOutput",
    "Manifest",
    "ModelBundle",
    "ModelConfigError",
    "FrontEndNotFitted",
    "PCAConfig",
    "PCAEstimator",
    "PatchConfig",
    "PatchEstimator",
    "PhysicalGaussian",
    "Prediction",
    "ResNetConfig",
    "ResNetEstimator",
    "build_model",
    "combine_gaussians",
    "config_from_dict",
    "config_to_dict",
    "beta_nll_weights",
    "dae_loss",
    "describe",
    "gaussian_nll",
    "to_physical",
]
