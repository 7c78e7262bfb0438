"""Settings modules, one per environment: dev, test and production."""
