"""Routes for the pages people use: upload, result, history and their images."""
from django.urls import path

app_name = "classifier"

urlpatterns: list = []
