"""Uploads, predictions and the pages people use to classify digits."""
