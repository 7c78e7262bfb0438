"""Sign-up, log-in and log-out pages on top of django.contrib.auth."""
