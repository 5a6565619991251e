"""TTSR (Yang et al., CVPR 2020): LTE, relevance search with hard and soft attention,
texture transfer and the main network with CSFI; one module per part of the paper."""

from ttsr_cli.archs.ttsr.model import TTSR, TTSRConfig, TTSROutput

__all__ = ["TTSR", "TTSRConfig", "TTSROutput"]
