"""Sign-up (a few accounts an hour per address) and a log-in view that slows down password guessing."""
import math
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.backends import client_address
from accounts.forms import SignupForm
from accounts.services import login_attempt_allowed
from classifier.throttling import TOLERANCE_S, allowance_take, rate_parse


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
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        retry_after = _signup_allowance_take(request)
        if retry_after is not None:
            form.add_error(None, f"Too many accounts were created from your address; try again in "
                                 f"{math.ceil(retry_after / 60)} minutes.")
            response = render(request, "registration/signup.html", {"form": form}, status=429)
            response["Retry-After"] = str(math.ceil(retry_after))
            return response
        user = form.save()
        login(request, user)
        messages.success(request, "Welcome! Upload or draw a digit to get started.")
        return redirect("classifier:upload")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


def _signup_allowance_take(request: HttpRequest) -> float | None:
    """Spend one sign-up of the client address's allowance; the seconds to wait instead when it is spent.

    Every account gets its own upload allowance, so accounts made by the hundred would multiply it.
    """
    rate = rate_parse(settings.SIGNUP_THROTTLE_RATE)
    if rate is None:
        return None
    count, period = rate
    retry_after = allowance_take(
        key=f"throttle_signups_{client_address(request)}", now=time.time(), cost=period / count, period=period
    )
    return retry_after if retry_after > TOLERANCE_S else None
