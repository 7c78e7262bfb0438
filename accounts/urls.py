"""Routes for sign-up, log-in, log-out, password reset and the account page (password, email, API tokens, deletion)."""
from django.urls import path

from accounts import views

urlpatterns = [
    path("login/", views.ThrottledLoginView.as_view(), name="login"),
    path("logout/", views.SiteLogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("", views.account, name="account"),
    path("password/", views.AccountPasswordChangeView.as_view(), name="password_change"),
    path("password/reset/", views.SitePasswordResetView.as_view(), name="password_reset"),
    path("password/reset/sent/", views.SitePasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password/reset/done/", views.SitePasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("password/reset/<uidb64>/<token>/", views.SitePasswordResetConfirmView.as_view(),
         name="password_reset_confirm"),
    path("email/", views.account_email_change, name="account_email_change"),
    path("email/confirmation/", views.account_email_confirmation_send, name="account_email_confirmation_send"),
    path("email/confirm/<str:token>/", views.email_confirm, name="email_confirm"),
    path("tokens/", views.account_token_create, name="account_token_create"),
    path("tokens/<int:token_id>/revoke/", views.account_token_revoke, name="account_token_revoke"),
    path("delete/", views.account_delete, name="account_delete"),
]
