"""Alchemical SOAP-BPNN: Behler-Parrinello networks on power-spectrum features whose species are compressed
into a few learnable pseudo-species (Willatt et al. 2018; Lopanitsyna et al. 2023), natively in torch.
"""
