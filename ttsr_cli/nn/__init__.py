"""The TTSR network, one module per part of the paper (LTE, attention, main network)."""

from ttsr_cli.nn.ttsr import TTSR, TTSRConfig, TTSROutput

__all__ = ["TTSR", "TTSRConfig", "TTSROutput"]
