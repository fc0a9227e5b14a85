"""Evaluation: FID in difflab's own per-dataset feature space (see :mod:`difflab.evaluate.fid`)."""

from difflab.evaluate.features import (FeatureConfig, FeatureNet, extract_features, get_feature_extractor,
                                       load_feature_extractor, train_feature_extractor)
from difflab.evaluate.fid import compute_fid, fid_from_features, fit_gaussian, frechet_distance

__all__ = ["FeatureConfig", "FeatureNet", "compute_fid", "extract_features", "fid_from_features", "fit_gaussian",
           "frechet_distance", "get_feature_extractor", "load_feature_extractor", "train_feature_extractor"]
