"""Sign-up and a log-in view that slows down password guessing."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.backends import client_address
from accounts.services import login_attempt_allowed


class ThrottledLoginView(LoginView):
    """Django's login view, answering 429 while the lockout (enforced by the backend) is on."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username = request.POST.get("username", "")
        if not login_attempt_allowed(username=username, ip=client_address(request)):
            form = self.get_form()
            form.add_error(None, "Too many failed log-in attempts. Try again in a few minutes.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)


@login_not_required
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_ENABLED:
        raise Http404("Sign-up is closed on this site.")
    if request.user.is_authenticated:
        return redirect("classifier:upload")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        messages.success(request, "Welcome! Upload or draw a digit to get started.")
        return redirect("classifier:upload")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)
