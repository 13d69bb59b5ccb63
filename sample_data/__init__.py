"""Synthetic beating-heart phantom and napari sample-data contributions (``napari_cinema.sample_data``)."""
