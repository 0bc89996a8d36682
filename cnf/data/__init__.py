"""Datasets and LightningDataModules (toy 2D densities; tabular and images elsewhere here)."""
