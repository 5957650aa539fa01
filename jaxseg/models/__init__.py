"""Models, one family per file: Flax NNX networks, smp's architectures on pretrained encoders
(`create`), and the count-based n-gram baseline."""

from jaxseg.models.detector import FCOSDetector
from jaxseg.models.fcn import FCN
from jaxseg.models.lstm_lm import LSTMLanguageModel
from jaxseg.models.ngram import NGramModel
from jaxseg.models.transformer_lm import TransformerLanguageModel
from jaxseg.models.unet import UNet
from jaxseg.models.zoo import create

__all__ = ["FCN", "FCOSDetector", "LSTMLanguageModel", "NGramModel", "TransformerLanguageModel", "UNet", "create"]
