"""Sign-up and a log-in view that slows down password guessing."""
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.services import login_attempt_allowed, login_attempt_record_failure, login_attempts_reset


class ThrottledLoginView(LoginView):
    """Django's login view, refusing further tries after repeated failures."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username = request.POST.get("username", "")
        if not login_attempt_allowed(username=username, ip=request.META.get("REMOTE_ADDR", "")):
            form = self.get_form()
            form.add_error(None, "Too many failed log-in attempts. Try again in a few minutes.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        login_attempt_record_failure(
            username=self.request.POST.get("username", ""), ip=self.request.META.get("REMOTE_ADDR", "")
        )
        return super().form_invalid(form)

    def form_valid(self, form):
        login_attempts_reset(username=form.get_user().get_username(), ip=self.request.META.get("REMOTE_ADDR", ""))
        return super().form_valid(form)


@login_not_required
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("classifier:upload")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        messages.success(request, "Welcome! Upload or draw a digit to get started.")
        return redirect("classifier:upload")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)
