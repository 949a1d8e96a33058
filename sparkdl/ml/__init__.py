"""pyspark.ml Estimators and Models for sparkdl networks: Pipeline, CrossValidator and save/load ready."""
from .estimators import DeepClassificationModel, DeepClassifier, DeepRegressionModel, DeepRegressor
from .summary import DeepTrainingSummary

__all__ = ["DeepClassifier", "DeepClassificationModel", "DeepRegressor", "DeepRegressionModel",
           "DeepTrainingSummary"]
