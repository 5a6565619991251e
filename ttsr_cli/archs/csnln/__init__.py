"""CSNLN, the cross-scale non-local attention network (Mei et al., CVPR 2020), whose official
checkpoints load here unchanged.  ``load.FAMILY`` is what :mod:`ttsr_cli.archs` sees."""

from ttsr_cli.archs.csnln.model import CSNLN, CSNLNConfig

__all__ = ["CSNLN", "CSNLNConfig"]
