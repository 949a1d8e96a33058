"""Optimizers over one flat parameter buffer, with their state in one flat buffer (see ``base``)."""
from sparkdl.optim import schedules
from sparkdl.optim.base import OPTIMIZERS, Optimizer, get, serialize
from sparkdl.optim.optimizers import SGD, Adagrad, Adam, AdamW, RMSprop
from sparkdl.optim.schedules import CosineDecay, ExponentialDecay, LearningRateSchedule, LinearWarmup, StepDecay

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "get", "serialize", "schedules",
           "LearningRateSchedule", "StepDecay", "ExponentialDecay", "CosineDecay", "LinearWarmup", "OPTIMIZERS"]
