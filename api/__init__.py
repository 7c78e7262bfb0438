"""The versioned REST API: predictions for everyone, training and checkpoints for staff."""
