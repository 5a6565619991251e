"""SFT-GAN (Wang et al., CVPR 2018): a x4 generator whose features are modulated by spatial
feature transforms of segmentation priors, and OutdoorSceneSeg, the segmentation network that
makes those priors.  The published checkpoints load here unchanged.  ``load.FAMILY`` (the
generators) is what :mod:`ttsr_cli.archs` sees; ``load.load_segmentation`` loads the other."""

from ttsr_cli.archs.sftgan.generator import SFTGAN, ResBlockSFT, SFTGANConfig
from ttsr_cli.archs.sftgan.segmentation import CLASSES, OutdoorSceneSeg
from ttsr_cli.archs.sftgan.sft import VARIANTS, SFTLayer

__all__ = [
    "CLASSES",
    "SFTGAN",
    "VARIANTS",
    "OutdoorSceneSeg",
    "ResBlockSFT",
    "SFTGANConfig",
    "SFTLayer",
]
