"""piggylab: learn, explore and reproduce Piggyback (Mallya et al., ECCV 2018)."""
__version__ = "0.1.0"
