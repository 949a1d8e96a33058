"""The only package that imports pyspark: DataFrame -> Arrow -> numpy, training masters, distributed
evaluate/predict."""
from .master import ParameterAveraging
from .session import local_session
from .trainer import SparkTrainer
from .prepared import held as prepared_data, release as release_prepared
