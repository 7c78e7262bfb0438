"""Routes for the pages people use: upload, result, history and their images."""
from django.urls import path

from classifier import views

app_name = "classifier"

urlpatterns = [
    path("", views.upload, name="upload"),
    path("history/", views.history, name="history"),
    path("history/delete", views.uploads_delete, name="uploads_delete"),
    path("history/export.csv", views.history_export, {"kind": "csv"}, name="history_export_csv"),
    path("history/export.zip", views.history_export, {"kind": "zip"}, name="history_export_zip"),
    path("predictions/<int:pk>/", views.prediction_detail, name="prediction_detail"),
    path("predictions.json", views.predictions_json, name="predictions_json"),
    path("predictions/<int:pk>.json", views.prediction_json, name="prediction_json"),
    path("predictions/<int:pk>/input.png", views.prediction_input, name="prediction_input"),
    path("predictions/<int:pk>/feedback", views.prediction_feedback, name="prediction_feedback"),
    path("predictions/<int:pk>/retry", views.prediction_retry, name="prediction_retry"),
    path("uploads/<int:pk>/", views.upload_detail, name="upload_detail"),
    path("uploads/<int:pk>/image", views.upload_image, name="upload_image"),
    path("uploads/<int:pk>/image/<int:side>px", views.upload_image_scaled, name="upload_image_scaled"),
    path("uploads/<int:pk>/delete", views.upload_delete, name="upload_delete"),
]
