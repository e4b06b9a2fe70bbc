"""ALIGNN (atomistic line graph neural network) with atom-wise energies and forces = -dE/dR, natively in torch.

hypers.py is torch-free (settings validation); model.py holds AlignnArchitecture, graph.py and layers.py its parts.
"""
