"""Controlled studies of the robust objectives, small enough to run on a CPU in seconds.

``radius``: how the chi-square radius schedule trades the coverage of the true distribution
against the statistical rate, in the linear-reward, log-linear-policy setting of DRO-REBEL.

``shift``: what the chi-square group objective trades when no single parameter is right (groups
with different linear laws, one shared fit, a skewed training mixture): worst-group risk against
risk on the training mixture, per radius.
"""
