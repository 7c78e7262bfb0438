"""Routes for sign-up, log-in, log-out and the account page (password, API tokens, deletion)."""
from django.urls import path

from accounts import views

urlpatterns = [
    path("login/", views.ThrottledLoginView.as_view(), name="login"),
    path("logout/", views.SiteLogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("", views.account, name="account"),
    path("password/", views.AccountPasswordChangeView.as_view(), name="password_change"),
    path("tokens/", views.account_token_create, name="account_token_create"),
    path("tokens/<int:token_id>/revoke/", views.account_token_revoke, name="account_token_revoke"),
    path("delete/", views.account_delete, name="account_delete"),
]
