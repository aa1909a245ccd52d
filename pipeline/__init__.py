"""latentmill: dataset-scale StyleGAN2 inversion, scoring and curation."""

__version__ = "0.1.0"
